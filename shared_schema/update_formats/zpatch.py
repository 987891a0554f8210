"""``zpatch``: the new file compressed with zstd, the previous file as a raw-content dictionary.

For model files this project cannot patch value by value (Edge TPU-compiled models, ONNX): the
unchanged regions of the new file cost almost nothing, as zstd copies them from the dictionary.
"""

from __future__ import annotations

import zstandard

from shared_schema.tflite_file import TFLiteFile
from shared_schema.update_formats.errors import UpdateFormatError
from shared_schema.update_formats.framing import decompress

LEVEL = 19
MAX_WINDOW_LOG = 31
# How much larger than its base a patched file may be: updates change weights, not the graph,
# so a new file is about its base's size (an Edge TPU recompile moves it by a few percent).
GROWTH = 2


def _window_log(base: bytes, new_size: int) -> int:
    # The match window must reach back over the whole dictionary from the end of the new file.
    return min(MAX_WINDOW_LOG, max(20, (len(base) + new_size).bit_length()))


def encode(base: bytes, new: bytes) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        LEVEL, window_log=_window_log(base, len(new))
    )
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    compressor = zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params)
    return compressor.compress(new)


def apply(base: bytes | TFLiteFile, body: bytes) -> bytes:
    if isinstance(base, TFLiteFile):
        base = base.data
    try:
        return decompress(body, GROWTH * len(base) + (1 << 20), dictionary=base)
    except UpdateFormatError as exc:
        raise UpdateFormatError(f"zpatch body does not apply to this base: {exc}") from exc
