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

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Off by default: on the paper evaluation it cost 2 points (README, "Training settings")
    enabled: bool = False
    holdout: int = Field(4, ge=1, le=64)  # at most this many new samples judge each phase
    margin: float = Field(0.0, ge=0.0, le=1.0)  # mIoU the new model may lose (0.01: a point)
    revert: bool = False  # after a gated phase, train on from the last model sent

    def held_out(self, fresh: int, buffered: int) -> int:
        """How many samples a phase leaves out, of ``fresh`` labelled since the last phase
        and ``buffered`` in all: never more than half, so a phase always trains on something;
        0 (no gate) while there are fewer than two."""
        return min(self.holdout, fresh, buffered // 2) if self.enabled else 0


@dataclass(frozen=True)
class Verdict:
    candidate: float  # mean mIoU of the phase's model on the held-out samples (``judging``)
    running: float  # of the model the device runs
    passed: bool


def judge(candidate: float, running: float, margin: float) -> Verdict:
    """The phase's model passes unless it scores more than ``margin`` below the device's."""
    return Verdict(candidate, running, candidate >= running - margin)
