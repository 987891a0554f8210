"""``ams-fp16``: the AMS baseline (seed 002 §3.1.2): float16 values of the selected parameters
and a gzip'd bit-mask saying which. The mask runs over every trainable value of the model in
graph order (``TFLiteFile.trainable``), each tensor flat in TFLite layout. The receiver
quantizes the float16 values at the tensor's frozen scales. Layout:

    b"AF1" | u32 length of the gzip'd mask | gzip'd mask (packed bits, little bit order)
    | float16 values, one per set bit
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np

from shared_schema.tflite_file import TFLiteFile, nearest_float16
from shared_schema.update_formats.errors import UpdateFormatError
from shared_schema.update_formats.framing import Reader, parse_model

MAGIC = b"AF1"


def encode(base: TFLiteFile, selected: dict[int, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """``selected`` maps tensor index → (flat positions in TFLite layout, real values)."""
    mask = np.zeros(base.trainable_size, bool)
    values = np.zeros(base.trainable_size, np.float16)
    offset = 0
    for tensor in base.trainable:
        if tensor.index in selected:
            positions, real = selected[tensor.index]
            mask[offset + positions] = True
            values[offset + positions] = nearest_float16(real)
        offset += tensor.size
    packed = gzip.compress(np.packbits(mask, bitorder="little").tobytes(), mtime=0)
    return (
        MAGIC
        + np.array([len(packed)], "<u4").tobytes()
        + packed
        + values[mask].astype("<f2").tobytes()
    )


def apply(base: bytes | TFLiteFile, body: bytes) -> bytes:
    model = parse_model(base)
    reader = Reader(body)
    reader.expect(MAGIC)
    (packed_len,) = reader.array("<u4", 1)
    mask = _mask(reader.take(int(packed_len)), model.trainable_size)
    real = reader.array("<f2", int(mask.sum())).astype(np.float64)
    reader.done()
    if not np.isfinite(real).all():
        raise UpdateFormatError("update carries non-finite values")
    updates, offset, used = {}, 0, 0
    for tensor in model.trainable:
        positions = np.flatnonzero(mask[offset : offset + tensor.size])
        offset += tensor.size
        if positions.size:
            values = model.values(tensor).copy()
            values[positions] = tensor.quantize(real[used : used + positions.size], positions)
            used += positions.size
            updates[tensor.index] = values
    return model.patched(updates)


def _mask(packed_gz: bytes, size: int) -> np.ndarray:
    expected = -(-size // 8)  # one bit per trainable value: the mask can be no longer
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
    try:
        packed = inflate.decompress(packed_gz, expected + 1)  # never more than that, streamed
    except zlib.error as exc:
        raise UpdateFormatError(f"mask is not valid gzip: {exc}") from exc
    if not inflate.eof and len(packed) <= expected:
        raise UpdateFormatError("mask is not valid gzip: it ends early")
    if inflate.unused_data:  # its length is declared: nothing else belongs in it
        raise UpdateFormatError(f"{len(inflate.unused_data)} unexpected bytes after the mask")
    if len(packed) != expected:
        raise UpdateFormatError(f"mask covers more or fewer than the model's {size} values")
    bits = np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little")
    if bits[size:].any():
        raise UpdateFormatError("mask sets bits beyond the model's values")
    return bits[:size].astype(bool)
