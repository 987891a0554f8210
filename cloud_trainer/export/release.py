"""A new export as a new model version for a device: the full file, or a zpatch from its model.

A new export changes the graph, the quantization or the format, so a value update (qdelta)
cannot carry it; the device gets the whole file, or, when it is smaller, a `zpatch`: the new file
compressed with the device's current one as a dictionary (SPEC §5). Either way the device
verifies the result's sha256 before it swaps. Signing, when the trainer has a key, happens where
messages are sent, as for every other update.
"""

from __future__ import annotations

from shared_schema.envelope import sha256_hex
from shared_schema.messages import Model, ModelFormat, Update, UpdateFormat
from shared_schema.update_formats import zpatch


def release(
    new: bytes,
    version: int,
    model_format: ModelFormat,
    *,
    base: bytes | None = None,
    base_version: int | None = None,
    name: str = "",
) -> tuple[Model | Update, bytes]:
    """The message and body that bring a device to `new` as `version`.

    With the device's current model (`base`, `base_version`: 0 for a device still on its
    unversioned initial model) the smaller of a zpatch and the full file; without it, the full
    file.
    """
    full = Model(version=version, format=model_format, name=name)
    if base is None or base_version is None:
        return full, new
    body = zpatch.encode(base, new)
    if len(body) >= len(new):
        return full, new
    update = Update(
        base_version=base_version,
        base_sha256=sha256_hex(base),
        new_version=version,
        result_sha256=sha256_hex(new),
        format=UpdateFormat.ZPATCH,
    )
    return update, body
