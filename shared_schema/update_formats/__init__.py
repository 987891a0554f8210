"""Model update formats (SPEC §5), the same code on the trainer and on the device.

``apply_update(format, base, body)`` is the one way a device (or the trainer's mirror) turns its
current model file plus an update body into the next model file:

- ``qdelta``: the quantized values that changed, per tensor (the default);
- ``ams-fp16``: the AMS baseline, float16 values of the selected parameters + gzip'd bit-mask;
- ``zpatch``: zstd with the previous file as a raw-content dictionary, for opaque files.

Every malformed body raises ``UpdateFormatError``; the caller checks the result's sha256.
"""

from shared_schema.messages import UpdateFormat
from shared_schema.tflite_file import TFLiteFile
from shared_schema.update_formats import ams_fp16, qdelta, zpatch
from shared_schema.update_formats.errors import UpdateFormatError

_APPLY = {
    UpdateFormat.QDELTA: qdelta.apply,
    UpdateFormat.AMS_FP16: ams_fp16.apply,
    UpdateFormat.ZPATCH: zpatch.apply,
}


def apply_update(fmt: UpdateFormat, base: bytes | TFLiteFile, body: bytes) -> bytes:
    """The model file that ``body`` (in format ``fmt``) makes of ``base`` (its bytes, or the
    parsed file, which saves parsing it again)."""
    return _APPLY[UpdateFormat(fmt)](base, body)


def keeps_layout(fmt: UpdateFormat) -> bool:
    """Whether results of ``fmt`` have their base's layout (values rewritten in place)."""
    return UpdateFormat(fmt) in (UpdateFormat.QDELTA, UpdateFormat.AMS_FP16)


__all__ = ["UpdateFormatError", "ams_fp16", "apply_update", "keeps_layout", "qdelta", "zpatch"]
