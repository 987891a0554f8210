"""Model update formats (SPEC §5), the same code on the trainer and on the device.

``apply_update(format, base, body)`` is the one way a device (or the trainer's mirror) turns its
current model file plus an update body into the next model file:

- ``qdelta``: the quantized values that changed, per tensor (the default);
- ``ams-fp16``: the AMS baseline, float16 values of the selected parameters + gzip'd bit-mask;
- ``zpatch``: zstd with the previous file as a raw-content dictionary, for opaque files.

Every malformed body raises ``UpdateFormatError``. A receiver applies an ``Update`` message with
``verify_and_apply``, which also checks the result against the hash the message promises.
"""

from dataclasses import dataclass

from shared_schema.envelope import sha256_hex
from shared_schema.messages import Update, UpdateFormat
from shared_schema.tflite_file import TFLiteFile
from shared_schema.update_formats import ams_fp16, qdelta, zpatch
from shared_schema.update_formats.errors import ResultHashMismatch, UpdateFormatError
from shared_schema.update_formats.framing import parse_model

_APPLY = {
    UpdateFormat.QDELTA: qdelta.apply,
    UpdateFormat.AMS_FP16: ams_fp16.apply,
    UpdateFormat.ZPATCH: zpatch.apply,
}


@dataclass(frozen=True)
class Applied:
    """The file an update made, and, where its format keeps the base's layout, that file
    parsed without parsing it again (the next value update starts from it)."""

    data: bytes
    layout: TFLiteFile | None = None


def apply_update(fmt: UpdateFormat, base: bytes | TFLiteFile, body: bytes) -> bytes:
    """The model file that ``body`` (in format ``fmt``) makes of ``base`` (its bytes, or the
    parsed file, which saves parsing it again)."""
    return _APPLY[UpdateFormat(fmt)](base, body)


def verify_and_apply(update: Update, base: bytes | TFLiteFile, body: bytes) -> Applied:
    """The file that ``body`` makes of ``base``, which must be the one ``update`` promises
    (``ResultHashMismatch`` otherwise; ``UpdateFormatError`` for a body that does not apply)."""
    model = parse_model(base) if keeps_layout(update.format) else None
    data = apply_update(update.format, base if model is None else model, body)
    if sha256_hex(data) != update.result_sha256:
        raise ResultHashMismatch("patched model does not match result_sha256")
    return Applied(data, None if model is None else model.with_data(data))


def keeps_layout(fmt: UpdateFormat) -> bool:
    """Whether results of ``fmt`` have their base's layout (values rewritten in place)."""
    return UpdateFormat(fmt) in (UpdateFormat.QDELTA, UpdateFormat.AMS_FP16)


__all__ = [
    "Applied",
    "ResultHashMismatch",
    "UpdateFormatError",
    "ams_fp16",
    "apply_update",
    "keeps_layout",
    "qdelta",
    "verify_and_apply",
    "zpatch",
]
