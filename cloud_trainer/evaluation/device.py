"""The device's model as the device holds it: a TFLite file, patched by each update body with
``verify_and_apply`` at the virtual time the body arrives (checked against the update's result
hash) and run through LiteRT, exactly what the edge runtime does between two frames."""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from cloud_trainer.evaluation.cache import LabelCache
from edge_runtime.backends.base import Engine
from edge_runtime.backends.litert import LiteRtConfig
from shared_schema.envelope import sha256_hex
from shared_schema.messages import Update
from shared_schema.update_formats import ResultHashMismatch, verify_and_apply


class UpdateMismatch(RuntimeError):
    """A patched file whose hash is not the one the trainer's mirror made: a broken update."""


class DeviceModel:
    def __init__(self, initial: bytes, pretrained: LabelCache | None, threads: int) -> None:
        self.data = initial
        self._initial_sha = sha256_hex(initial)
        self._sha = self._initial_sha
        # the initial file's labels, cached across schemes; None: the file runs from the start
        self._pretrained = pretrained
        self._backend = LiteRtConfig(threads=threads)
        self._engine: Engine | None = None
        if pretrained is None:
            self._engine = self._backend.open(initial)
        self._pending: list[tuple[float, int, Update, bytes]] = []
        self._order = itertools.count()  # same arrival time: in the order they were sent
        self.applied: list[float] = []  # arrival times of the updates applied so far

    def schedule(self, arrival_s: float, update: Update, body: bytes) -> None:
        heapq.heappush(self._pending, (arrival_s, next(self._order), update, body))

    def advance_to(self, t: float) -> None:
        """Apply, in order, every update that has arrived by ``t``."""
        while self._pending and self._pending[0][0] <= t:
            arrival, _, update, body = heapq.heappop(self._pending)
            if update.base_sha256 != self._sha:
                raise UpdateMismatch(f"update {update.new_version} is not for the file held")
            try:
                patched = verify_and_apply(update, self.data, body).data
            except ResultHashMismatch as exc:
                raise UpdateMismatch(
                    f"update {update.new_version} patched a different file"
                ) from exc
            self.data, self._sha = patched, update.result_sha256
            if self._engine is not None:
                self._engine.close()
            self._engine = self._backend.open(patched)
            self.applied.append(arrival)

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        """The device's label map for a frame at the model's input size."""
        if self._pretrained is not None and self._sha == self._initial_sha:
            return self._pretrained(rgb[None])[0]
        assert self._engine is not None
        return self._engine.infer(rgb).astype(np.uint8)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
