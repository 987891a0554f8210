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


_CHUNK = 1 << 16  # bytes decompressed at a time


def decompress(body: bytes, max_output: int, dictionary: bytes | None = None) -> bytes:
    """One zstd frame, decompressed into at most ``max_output`` bytes (``dictionary``: raw
    content the frame may copy from, as zpatch's previous file).

    python-zstandard's one-shot ``decompress`` allocates whatever content size a frame header
    declares, ``max_output_size`` notwithstanding. So the header must declare the size (every
    encoder here writes it) and is checked first, the window the decoder may allocate is capped
    by what ``max_output`` (and the dictionary) can need, and the frame is streamed, stopping at
    the cap: a small body never costs more memory than the model it patches. A frame that ends
    before its declared size (or its checksum) is truncated, and nothing may follow it.
    """
    try:
        declared = zstandard.get_frame_parameters(body).content_size
    except zstandard.ZstdError as exc:
        raise UpdateFormatError(f"update body is not a zstd frame: {exc}") from exc
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        raise UpdateFormatError("update body's zstd frame does not declare its size")
    if declared > max_output:
        raise UpdateFormatError(
            f"update body declares {declared} bytes, more than the {max_output} its model takes"
        )
    window = 1 << (max_output + len(dictionary or b"")).bit_length()
    raw = None
    if dictionary is not None:
        raw = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    decompressor = zstandard.ZstdDecompressor(dict_data=raw, max_window_size=window)
    chunks, total = [], 0
    try:
        with decompressor.stream_reader(body, read_across_frames=False) as reader:
            while chunk := reader.read(_CHUNK):
                total += len(chunk)
                if total > declared:
                    raise UpdateFormatError(f"update body inflates beyond its {declared} bytes")
                chunks.append(chunk)
    except zstandard.ZstdError as exc:
        raise UpdateFormatError(f"update body is not valid zstd: {exc}") from exc
    if total != declared:
        raise UpdateFormatError(f"update body is truncated: {total} of its {declared} bytes")
    _one_whole_frame(decompressor, body)
    return b"".join(chunks)


def _one_whole_frame(decompressor: zstandard.ZstdDecompressor, body: bytes) -> None:
    """The body is one zstd frame, checksum included, and nothing after it. The stream above
    stops at the frame's content; this pass (its output is at most what that one accepted)
    sees where the frame itself ends."""
    frame = decompressor.decompressobj()
    try:
        frame.decompress(body)
    except zstandard.ZstdError as exc:
        raise UpdateFormatError(f"update body is not valid zstd: {exc}") from exc
    if not frame.eof:
        raise UpdateFormatError("update body is truncated: its zstd frame does not end")
    if frame.unused_data:
        raise UpdateFormatError(f"{len(frame.unused_data)} unexpected bytes after the zstd frame")


def parse_model(base: bytes | TFLiteFile) -> TFLiteFile:
    """The base of a value update, parsed unless it already is; a base that is no TFLite file
    is the update's error."""
    if isinstance(base, TFLiteFile):
        return base
    try:
        return TFLiteFile(base)
    except TFLiteFormatError as exc:
        raise UpdateFormatError(f"base model: {exc}") from exc
