"""``qdelta``: the quantized weight values that changed, per tensor, zstd-compressed.

The trainer writes its float master weights back at the frozen scales (the only way a new model
is made) and sends, for each trainable tensor whose stored values changed, the changed positions
and the differences from the base values, modulo the storage dtype. A float16 model's values are
differenced as their 16-bit words (``ConstTensor.word``), so that the result is exact too.
Layout before zstd:

    b"QD1" | u32 n | n × (u32 tensor index, u32 changes)
    | position gaps (u32, byte planes) | differences (storage words, byte planes, per tensor)
"""

from __future__ import annotations

import numpy as np
import zstandard

from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError
from shared_schema.update_formats.errors import UpdateFormatError
from shared_schema.update_formats.framing import (
    Reader,
    decompress,
    parse_model,
    planes,
    unplanes,
)

MAGIC = b"QD1"
LEVEL = 19


def encode(base: TFLiteFile, new_values: dict[int, np.ndarray]) -> bytes:
    """The qdelta body taking ``base`` to a file whose tensors hold ``new_values`` (flat, storage
    dtype, TFLite layout; tensors left out are unchanged)."""
    table, gaps, diffs = [], [], []
    for index in sorted(new_values):
        tensor = base.by_index[index]
        old = base.values(tensor).view(tensor.word)
        new = np.ascontiguousarray(new_values[index], tensor.dtype).ravel().view(tensor.word)
        if new.size != old.size:
            raise ValueError(f"tensor {index}: {new.size} values for {old.size}")
        changed = np.flatnonzero(new != old)
        if changed.size == 0:
            continue
        table.append((index, changed.size))
        gaps.append(np.diff(changed, prepend=0).astype("<u4"))
        diffs.append(planes((new[changed] - old[changed]).astype(tensor.word)))
    header = MAGIC + np.array([len(table)], "<u4").tobytes()
    header += np.array(table, "<u4").tobytes() if table else b""
    all_gaps = planes(np.concatenate(gaps)) if gaps else b""
    return zstandard.ZstdCompressor(level=LEVEL).compress(header + all_gaps + b"".join(diffs))


def apply(base: bytes | TFLiteFile, body: bytes) -> bytes:
    model = parse_model(base)
    reader = Reader(decompress(body, max_output=64 + 13 * model.trainable_size))
    reader.expect(MAGIC)
    (count,) = reader.array("<u4", 1)
    table = reader.array("<u4", 2 * int(count)).reshape(-1, 2)
    positions = _positions(model, table, reader)
    updates = {}
    for (index, changes), where in zip(table, positions, strict=True):
        tensor = model.by_index[int(index)]
        diff = unplanes(reader.take(int(changes) * tensor.word.itemsize), tensor.word, changes)
        values = model.values(tensor).view(tensor.word).copy()
        values[where] += diff  # wraps modulo the storage word, as the differences were taken
        updates[int(index)] = values.view(tensor.dtype)
    reader.done()
    try:
        return model.patched(updates)
    except TFLiteFormatError as exc:  # a float16 word that is no finite number
        raise UpdateFormatError(str(exc)) from exc


def _positions(model: TFLiteFile, table: np.ndarray, reader: Reader) -> list[np.ndarray]:
    total = int(table[:, 1].sum()) if table.size else 0
    gaps = unplanes(reader.take(4 * total), np.dtype("<u4"), total).astype(np.int64)
    out, start = [], 0
    previous = -1
    for index, changes in table:
        tensor = model.by_index.get(int(index))
        if tensor is None or int(index) <= previous:
            raise UpdateFormatError(f"tensor {index} is not a trainable tensor, or out of order")
        previous = int(index)
        where = np.cumsum(gaps[start : start + int(changes)])
        start += int(changes)
        increasing = where.size < 2 or bool((np.diff(where) > 0).all())
        if changes == 0 or not increasing or where[-1] >= tensor.size:
            raise UpdateFormatError(f"tensor {index}: positions out of range or repeated")
        out.append(where)
    return out
