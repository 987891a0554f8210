"""Decompression bombs against the real student: every update format refuses a body that would
inflate beyond what its model can take, with a typed error, before allocating it.

The memory check runs the bombs in a fresh interpreter and reads its peak RSS before and
after: the peak of a process only grows, so the test's own process could not show it.
"""

from __future__ import annotations

import functools
import gzip
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard

from shared_schema.messages import UpdateFormat
from shared_schema.tflite_file import TFLiteFile
from shared_schema.update_formats import UpdateFormatError, ams_fp16, apply_update, qdelta
from shared_schema.update_formats.framing import decompress

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
MAX_RSS_GROWTH = 64 * 2**20
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def declared_frame(declared: int, payload: bytes) -> bytes:
    """A zstd frame whose header declares ``declared`` bytes, holding ``payload`` raw."""
    header = (
        _ZSTD_MAGIC + bytes([0xE0]) + struct.pack("<Q", declared)
    )  # single segment, 8-byte size
    block = struct.pack("<I", 1 | len(payload) << 3)[:3]  # last block, raw
    return header + block + payload


def rle_frame(declared: int, blocks: int) -> bytes:
    """A zstd frame declaring ``declared`` bytes whose RLE blocks make 128 KiB each."""
    header = _ZSTD_MAGIC + bytes([0xE0]) + struct.pack("<Q", declared)
    body = b""
    for i in range(blocks):
        last = int(i == blocks - 1)
        body += struct.pack("<I", last | 1 << 1 | (128 * 1024) << 3)[:3] + b"\x00"
    return header + body


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes gzip'd, made a MiB at a time (building a bomb is no test of it)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    return b"".join(deflate.compress(chunk) for _ in range(size >> 20)) + deflate.flush()


def zstd_stream_bomb(prefix: bytes, size: int) -> bytes:
    """``prefix`` and ``size`` zero bytes in one zstd frame that does not declare its size."""
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    chunk = bytes(1 << 20)
    parts = [compressor.compress(prefix)]
    parts += [compressor.compress(chunk) for _ in range(size >> 20)]
    return b"".join([*parts, compressor.flush()])


def ams_body(mask_gz: bytes) -> bytes:
    return ams_fp16.MAGIC + struct.pack("<I", len(mask_gz)) + mask_gz


@functools.cache
def bombs() -> dict[str, tuple[UpdateFormat, bytes]]:
    """Each a small body that a careless decoder would inflate to gigabytes."""
    return {
        "qdelta declares 4 GiB": (UpdateFormat.QDELTA, declared_frame(4 << 30, b"QD1")),
        "qdelta RLE blocks past a small size": (UpdateFormat.QDELTA, rle_frame(1000, 4000)),
        "qdelta of unstated size": (UpdateFormat.QDELTA, zstd_stream_bomb(b"QD1", 256 << 20)),
        "zpatch declares 2 GiB": (UpdateFormat.ZPATCH, declared_frame(2 << 30, b"\x00" * 64)),
        "zpatch RLE blocks": (UpdateFormat.ZPATCH, rle_frame(1 << 30, 4000)),
        "ams-fp16 gzip'd mask of 512 MiB": (UpdateFormat.AMS_FP16, ams_body(gzip_bomb(512 << 20))),
    }


@pytest.fixture(scope="module")
def base(shared_dir) -> bytes:
    return (shared_dir / STUDENT).read_bytes()


@pytest.mark.parametrize("name", list(bombs()))
def test_a_bomb_is_refused_with_a_typed_error(base, name):
    fmt, body = bombs()[name]
    assert len(body) < 1 << 20  # small on the wire
    with pytest.raises(UpdateFormatError):
        apply_update(fmt, base, body)


def test_bombs_leave_the_peak_memory_alone(shared_dir):
    probe = textwrap.dedent(
        f"""
        import json, resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.test_bounded_decoding import bombs
        from shared_schema.update_formats import UpdateFormatError, apply_update
        base = open({str(shared_dir / STUDENT)!r}, "rb").read()
        cases = bombs()  # built before the baseline: building them is not decoding them
        growth = {{}}
        for name, (fmt, body) in cases.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                apply_update(fmt, base, body)
                growth[name] = "accepted"
            except UpdateFormatError:
                growth[name] = 1024 * (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        print(json.dumps(growth))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    growth = json.loads(out.splitlines()[-1])
    assert set(growth) == set(bombs())
    assert all(isinstance(g, int) and g < MAX_RSS_GROWTH for g in growth.values()), growth


def test_honest_bodies_still_apply(base):
    model = TFLiteFile(base)
    tensor = model.trainable[0]
    values = model.values(tensor).copy()
    values[:5] += 1
    assert apply_update(UpdateFormat.QDELTA, base, qdelta.encode(model, {tensor.index: values}))


def test_a_frame_cut_short_or_inflating_past_its_size_is_refused():
    honest = zstandard.ZstdCompressor().compress(b"x" * 5000)
    assert decompress(honest, 5000) == b"x" * 5000
    with pytest.raises(UpdateFormatError, match="more than the 4999"):
        decompress(honest, 4999)
    with pytest.raises(UpdateFormatError, match=r"truncated|not valid zstd"):
        decompress(honest[:-3], 5000)
    with pytest.raises(UpdateFormatError, match=r"inflates beyond its 1000 bytes|not valid"):
        decompress(rle_frame(1000, 3), 1 << 20)


def test_a_mask_that_is_not_gzip_or_too_long_is_a_typed_error(base):
    model = TFLiteFile(base)
    expected = -(-model.trainable_size // 8)
    for mask in (b"\x1f\x8b" + b"\xff" * 30, gzip.compress(b"\x00" * (expected + 1))[:-9]):
        with pytest.raises(UpdateFormatError, match="mask is not valid gzip"):
            apply_update(UpdateFormat.AMS_FP16, base, ams_body(mask))
    longer = gzip.compress(np.zeros(expected + 8, np.uint8).tobytes())
    with pytest.raises(UpdateFormatError, match="more or fewer than the model's"):
        apply_update(UpdateFormat.AMS_FP16, base, ams_body(longer))
