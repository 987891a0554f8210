"""The trainer's mirror of one device's model file, version by version (SPEC §5).

A new version is made only by writing the student's float master weights back as the file
stores them (``stored_weights``: at the frozen scales, or as float16 in a float16 model) and
applying the resulting update body with the very code the device runs (``apply_update``), so
the mirror and the device hold bit-identical files. The mirror keeps the last few versions,
to answer a device's resync request with a delta from the version it has; older ones get the
full model.

With a ``directory``, every version is written to disk (atomically) before its update can be
sent, and a new mirror over the same directory resumes from it: after a crash of the trainer
the mirror still holds every version a device can be running. Each file's name carries the
start of its sha256: a file that fails it, or is not of the student's layout, is set aside
(``.damaged``) and the mirror resumes from the newest intact one; a device running the lost
file then gets the full model.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from cloud_trainer.outgoing import Outgoing
from cloud_trainer.student import TFLiteStudent, stored_weights
from edge_runtime.durable import atomic_write, remove_partial_writes
from shared_schema.envelope import sha256_hex
from shared_schema.messages import Model, ModelFormat, Update, UpdateFormat
from shared_schema.signing import Signer
from shared_schema.tflite_file import TFLiteFile
from shared_schema.update_formats import ams_fp16, apply_update, qdelta, zpatch


class ModelMirror:
    def __init__(
        self,
        initial: bytes,
        *,
        device_id: str,
        version: int = 0,
        history: int = 8,
        signer: Signer | None = None,
        directory: Path | None = None,
    ) -> None:
        self.device_id = device_id
        self._history = history
        self._signer = signer
        self._directory = directory
        self._layout = TFLiteFile(initial)
        self.damaged: list[Path] = []  # files set aside when resuming
        saved = self._read_saved()
        self._versions: OrderedDict[int, bytes] = saved or OrderedDict({version: bytes(initial)})
        self._hashes: dict[int, str] = {}  # version -> sha256, as asked (a few MB each to hash)
        if not saved:
            self._persist(version)

    @property
    def version(self) -> int:
        return next(reversed(self._versions))

    @property
    def data(self) -> bytes:
        return self._versions[self.version]

    @property
    def sha256(self) -> str:
        return self._hash(self.version)

    def _hash(self, version: int) -> str:
        if version not in self._hashes:
            self._hashes[version] = sha256_hex(self._versions[version])
        return self._hashes[version]

    def versions(self) -> dict[int, bytes]:
        return dict(self._versions)

    def find(self, sha256: str) -> int | None:
        """The newest version of a file the mirror still holds, by its hash (a rollback may
        have made an older file a newer version too)."""
        return next((v for v in reversed(self._versions) if self._hash(v) == sha256), None)

    def advance(
        self,
        student: TFLiteStudent,
        fmt: UpdateFormat,
        mask: list[torch.Tensor] | None = None,
    ) -> Outgoing:
        """The next version from the student's master weights, as an update in ``fmt``
        (``ams-fp16`` sends the values this phase's ``mask`` selected)."""
        return self._commit(fmt, self.body_for(student, fmt, mask))

    def body_for(
        self,
        student: TFLiteStudent,
        fmt: UpdateFormat,
        mask: list[torch.Tensor] | None = None,
    ) -> bytes:
        """The update body ``advance`` would send, without making a new version."""
        base = self._layout.with_data(self.data)
        if fmt == UpdateFormat.AMS_FP16:
            if mask is None:
                raise ValueError("ams-fp16 needs the phase's parameter mask")
            return ams_fp16.encode(base, _selected_values(student, mask))
        if fmt == UpdateFormat.ZPATCH:
            return zpatch.encode(self.data, self.candidate(student))
        return qdelta.encode(base, stored_weights(student, base))

    def advance_to(self, data: bytes) -> Outgoing:
        """The next version is ``data``, a file of the current one's layout with other bytes
        outside the weights too (an OPA selection refitted in place), sent as a zpatch."""
        self._layout.with_data(data)  # TFLiteFormatError unless it is of this layout
        return self._commit(UpdateFormat.ZPATCH, zpatch.encode(self.data, data))

    def candidate(self, student: TFLiteStudent) -> bytes:
        """The file ``advance`` would make of ``student`` (in qdelta or zpatch), without making
        a version."""
        base = self._layout.with_data(self.data)
        body = qdelta.encode(base, stored_weights(student, base))
        return apply_update(UpdateFormat.QDELTA, base, body)

    def update_since(self, version: int, fmt: UpdateFormat) -> Outgoing | None:
        """A delta from an older version the mirror still holds to the current one, or None."""
        old = self._versions.get(version)
        if old is None or version == self.version:
            return None
        fmt, body = self._delta(old, self.data, fmt)
        msg = Update(
            base_version=version,
            base_sha256=sha256_hex(old),
            new_version=self.version,
            result_sha256=self.sha256,
            format=fmt,
        )
        return self._signed(msg, body)

    def reissue(self, version: int, fmt: UpdateFormat | None) -> Outgoing | None:
        """The file of an older ``version`` made the next version (an operator's rollback
        further back than the device's standby slot: a device takes no version at or below the
        one it runs), as a delta in ``fmt`` from the current one; None without a format (the
        full model carries it)."""
        data = self._versions[version]
        if fmt is None:
            self._keep(self.version + 1, data)
            return None
        return self._commit(*self._delta(self.data, data, fmt))

    def _delta(self, old: bytes, new: bytes, fmt: UpdateFormat) -> tuple[UpdateFormat, bytes]:
        """An update body that makes ``new`` of ``old`` (both of the mirror's layout): the
        changed weight values in qdelta, unless ``fmt`` is zpatch or values alone do not make
        ``new`` (other bytes changed on the way: an OPA selection refitted in place)."""
        if fmt != UpdateFormat.ZPATCH:
            target = self._layout.with_data(new)
            values = {t.index: target.values(t) for t in target.trainable}
            body = qdelta.encode(self._layout.with_data(old), values)
            if apply_update(UpdateFormat.QDELTA, self._layout.with_data(old), body) == new:
                return UpdateFormat.QDELTA, body
        return UpdateFormat.ZPATCH, zpatch.encode(old, new)

    def renumber_after(self, version: int) -> None:
        """Number the current file after ``version``, if it is not already: devices refuse a
        version at or below the one they run, and one may run a version this mirror never
        made (its trainer lost its state). The file is kept under the new number first."""
        old = self.version
        if old > version:
            return
        data = self._versions[version + 1] = self._versions.pop(old)
        self._hashes.pop(version + 1, None)
        self._persist(version + 1)
        self._forget(old, data)

    def roll_back(self, version: int) -> bool:
        """Forget every version after ``version`` (a device refused them), if it is held."""
        if version not in self._versions:
            return False
        while self.version != version:
            self._forget(*self._versions.popitem())
        return True

    def full_model(self, name: str = "") -> Outgoing:
        return self._signed(
            Model(version=self.version, format=ModelFormat.TFLITE, name=name), self.data
        )

    def _commit(self, fmt: UpdateFormat, body: bytes) -> Outgoing:
        base_version, base = self.version, self.data
        # Every version has the first one's layout: body_for writes values into it.
        result = apply_update(fmt, self._layout.with_data(base), body)
        msg = Update(
            base_version=base_version,
            base_sha256=sha256_hex(base),
            new_version=base_version + 1,
            result_sha256=sha256_hex(result),
            format=fmt,
        )
        self._keep(base_version + 1, result)
        return self._signed(msg, body)

    def _keep(self, version: int, data: bytes) -> None:
        """``data`` is ``version``, the newest: on disk before anything can send it."""
        self._versions[version] = data
        self._hashes.pop(version, None)
        self._persist(version)
        while len(self._versions) > self._history:
            self._forget(*self._versions.popitem(last=False))

    def _signed(self, msg: Model | Update, body: bytes) -> Outgoing:
        if self._signer is not None:
            msg = self._signer.sign(self.device_id, msg, body)
        return Outgoing(msg, body)

    def _path(self, version: int, data: bytes) -> Path:
        assert self._directory is not None
        return self._directory / f"v{version:08d}-{sha256_hex(data)[:_NAME_HASH]}.tflite"

    def _persist(self, version: int) -> None:
        if self._directory is not None:
            self._directory.mkdir(parents=True, exist_ok=True)
            data = self._versions[version]
            atomic_write(self._path(version, data), data)

    def _forget(self, version: int, data: bytes) -> None:
        """A version the mirror no longer holds leaves the disk too."""
        self._hashes.pop(version, None)
        if self._directory is not None:
            self._path(version, data).unlink(missing_ok=True)

    def _read_saved(self) -> OrderedDict[int, bytes] | None:
        if self._directory is None or not self._directory.is_dir():
            return None
        remove_partial_writes(self._directory)
        versions: OrderedDict[int, bytes] = OrderedDict()
        for path in sorted(self._directory.glob("v*.tflite")):
            name, data = _NAME_RE.fullmatch(path.stem), path.read_bytes()
            if name and sha256_hex(data).startswith(name["sha"]) and self._of_layout(data):
                versions[int(name["version"])] = data
            else:
                path.replace(path.with_suffix(".damaged"))
                self.damaged.append(path)
        return versions or None

    def _of_layout(self, data: bytes) -> bool:
        try:
            self._layout.with_data(data)
        except ValueError:
            return False
        return True


_NAME_HASH = 16  # hex digits of a version file's sha256 in its name
_NAME_RE = re.compile(rf"v(?P<version>\d{{8}})-(?P<sha>[0-9a-f]{{{_NAME_HASH}}})")


def _selected_values(
    student: TFLiteStudent, mask: list[torch.Tensor]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per tensor: the flat TFLite-layout positions the mask selects, and their float values."""
    by_param = {id(p): b for p, b in zip(student.parameters(), mask, strict=True)}
    selected = {}
    for const in student.constants():
        layout = np.argsort(const.spec.permutation)
        chosen = by_param[id(const.master)].detach().cpu().numpy().transpose(layout).ravel()
        positions = np.flatnonzero(chosen)
        if positions.size:
            values = const.real().ravel()[positions].astype(np.float64)
            selected[const.spec.tensor_index] = (positions, values)
    return selected
