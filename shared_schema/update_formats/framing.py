"""Byte-level helpers shared by the update formats, and the base model they apply to."""

from __future__ import annotations

import numpy as np
import zstandard

from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError
from shared_schema.update_formats.errors import UpdateFormatError


def planes(values: np.ndarray) -> bytes:
    """Little-endian bytes regrouped by significance (all low bytes, then the next, ...): small
    integers leave the high planes nearly all zero, which zstd then stores in a few bytes."""
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(-1, values.dtype.itemsize)
    return raw.T.tobytes()


def unplanes(data: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    raw = np.frombuffer(data, np.uint8).reshape(dtype.itemsize, count)
    return np.ascontiguousarray(raw.T).view(dtype).reshape(count)


class Reader:
    """Reads a body front to back, turning every overrun into an UpdateFormatError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise UpdateFormatError("update body is truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def array(self, dtype: str, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(dt.itemsize * count), dt, count)

    def expect(self, magic: bytes) -> None:
        if self.take(len(magic)) != magic:
            raise UpdateFormatError(f"update body does not start with {magic!r}")

    def done(self) -> None:
        if self._pos != len(self._data):
            raise UpdateFormatError(f"{len(self._data) - self._pos} unexpected trailing bytes")


def decompress(body: bytes, max_output: int) -> bytes:
    """zstd-decompress, refusing anything that would inflate beyond ``max_output`` bytes."""
    try:
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=max_output)
    except zstandard.ZstdError as exc:
        raise UpdateFormatError(f"update body is not valid zstd: {exc}") from exc


def parse_model(base: bytes | TFLiteFile) -> TFLiteFile:
    """The base of a value update, parsed unless it already is; a base that is no TFLite file
    is the update's error."""
    if isinstance(base, TFLiteFile):
        return base
    try:
        return TFLiteFile(base)
    except TFLiteFormatError as exc:
        raise UpdateFormatError(f"base model: {exc}") from exc
