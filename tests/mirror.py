"""A stand-in for the trainer's mirror of one device: a chain of model versions and the
qdelta updates between them, framed (and signed, with a key) as the trainer sends them."""

from __future__ import annotations

import numpy as np

from shared_schema.envelope import decode, encode, sha256_hex
from shared_schema.messages import Model, Update
from shared_schema.signing import Signer
from shared_schema.tflite_file import TFLiteFile
from shared_schema.update_formats import qdelta

BOOT = "0" * 16


class Mirror:
    """The trainer's side, reduced to what slots see: a chain of versions and their updates."""

    def __init__(self, initial: bytes, key=None, device_id: str = "cam-1") -> None:
        self.versions = {0: initial}
        self.device_id = device_id
        self.key = key
        self.seq = 100

    def next_version(self, seed: int, fraction: float = 0.01) -> int:
        latest = max(self.versions)
        base = TFLiteFile(self.versions[latest])
        rng = np.random.default_rng(seed)
        new = {}
        for tensor in base.trainable[:40]:  # the backbone's early layers: labels stay sane
            values = base.values(tensor).copy()
            picked = rng.random(tensor.size) < fraction
            if tensor.dtype == np.uint8:
                values[picked] = np.clip(values[picked].astype(int) + 1, 0, 255)
            new[tensor.index] = values
        self.versions[latest + 1] = base.patched(new)
        return latest + 1

    def update(self, frm: int, to: int, **overrides) -> bytes:
        base, target = self.versions[frm], self.versions[to]
        new_file = TFLiteFile(target)
        body = overrides.pop("body", None)
        if body is None:
            body = qdelta.encode(
                TFLiteFile(base), {t.index: new_file.values(t) for t in new_file.trainable}
            )
        fields = dict(
            base_version=frm,
            base_sha256=sha256_hex(base),
            new_version=to,
            result_sha256=sha256_hex(target),
        )
        fields.update(overrides)
        msg = Update(**fields)
        return self._frame(msg, body)

    def model(self, version: int) -> bytes:
        return self._frame(Model(version=version), self.versions[version])

    def update_message(self, frm: int, to: int) -> tuple[Update, bytes]:
        """The update as a message and body, for sending through a TrainerEndpoint."""
        envelope = decode(self.update(frm, to))
        return envelope.msg, envelope.body

    def _frame(self, msg, body: bytes) -> bytes:
        if self.key is not None:
            msg = Signer(self.key).sign(self.device_id, msg, body)
        self.seq += 1
        return encode(msg, device_id="trainer", seq=self.seq, boot=BOOT, body=body)
