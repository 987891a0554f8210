"""The regression gate: a phase's model goes to the device only if it does no worse there.

A phase leaves out of its training the samples labelled since the previous phase (at most
``holdout`` of them, never more than half the buffer): the newest frames, which it has not
seen. Before its update leaves, the new model and the one the device runs (the mirror's
latest file) label them through LiteRT, as the device would, and are scored against the
teacher (mean per-frame mIoU over the stream's classes). The update is sent unless the new
model scores more than ``margin`` below; otherwise the phase is gated (counted) and nothing
is sent. Training goes on from the phase's weights (or, with ``revert``, from those of the
last model sent); the held-out samples are trained on from the next phase on.

Why: nothing else checks that a phase generalises; a static scene sampled slowly gives a
few near-identical frames that a phase can overfit, and the device would then run a model
worse than the one it had. Only the frames since the last phase are held out, so at 0.1 fps
a new frame is trained on one interval later, not several.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud_trainer.metrics import miou
from cloud_trainer.sample_buffer import Sample
from edge_runtime.backends.base import Engine
from edge_runtime.backends.litert import LiteRtConfig
from shared_schema.envelope import sha256_hex


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Off by default: on the paper evaluation it cost 2 points (README, "Training settings")
    enabled: bool = False
    holdout: int = Field(4, ge=1, le=64)  # at most this many new samples judge each phase
    margin: float = Field(0.0, ge=0.0, le=1.0)  # mIoU the new model may lose (0.01: a point)
    revert: bool = False  # after a gated phase, train on from the last model sent
    threads: int = Field(2, ge=1, le=64)  # LiteRT threads for the two models

    def held_out(self, fresh: int, buffered: int) -> int:
        """How many samples a phase leaves out, of ``fresh`` labelled since the last phase
        and ``buffered`` in all: never more than half, so a phase always trains on something;
        0 (no gate) while there are fewer than two."""
        return min(self.holdout, fresh, buffered // 2) if self.enabled else 0


@dataclass(frozen=True)
class Verdict:
    candidate: float  # mean mIoU of the phase's model on the held-out samples
    running: float  # of the model the device runs
    passed: bool


def judge(
    candidate: Sequence[np.ndarray],
    running: Sequence[np.ndarray],
    samples: Sequence[Sample],
    classes: Sequence[int],
    margin: float,
) -> Verdict:
    """Both models' labels of ``samples`` scored against the teacher's labels in them."""

    def score(labels: Sequence[np.ndarray]) -> float:
        pairs = zip(labels, samples, strict=True)
        return float(np.mean([miou(p, s.labels, classes) for p, s in pairs]))

    new, old = score(candidate), score(running)
    return Verdict(new, old, new >= old - margin)


class RegressionGate:
    """Runs the two files; the device's model stays open while the device runs it."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self._backend = LiteRtConfig(threads=config.threads)
        self._running: tuple[str, Engine] | None = None

    def judge(
        self, candidate: bytes, running: bytes, samples: Sequence[Sample], classes: Sequence[int]
    ) -> Verdict:
        engine = self._backend.open(candidate)
        try:
            new = [engine.infer(s.rgb) for s in samples]
        finally:
            engine.close()
        old = [self._running_engine(running).infer(s.rgb) for s in samples]
        return judge(new, old, samples, classes, self.config.margin)

    def _running_engine(self, data: bytes) -> Engine:
        sha = sha256_hex(data)
        if self._running is None or self._running[0] != sha:
            self.close()
            self._running = (sha, self._backend.open(data))
        return self._running[1]

    def close(self) -> None:
        if self._running is not None:
            self._running[1].close()
            self._running = None
