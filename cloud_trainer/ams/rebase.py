"""Rebase: back to the pretrained model when the scene has moved away from what training taught.

Before a phase trains, the model the device runs and the base model (the pretrained student the
device started from) label the samples labelled since the previous phase (the newest
``samples`` of them), through LiteRT as the device would (``judging``). Neither has trained on
them. If the base scores more than ``margin`` above the device's model, the scene has changed
beyond what the running model learnt: the student starts again from the base weights (fresh
optimizer state), and the buffer forgets every sample older than those judged, which belong to
the scene it was specialised for. The phase then trains from the base on the new scene alone,
and its update (a qdelta from the device's file, so every weight changed since the base) takes
the device there. At a scene cut the device reports (``edge_runtime.scene_cut``) the rule runs
at once on the cut's frame alone, and a win sends the base itself, untrained.

Why: on a stream of scenes, AMS's T_horizon buffer is dominated by the previous scene for
minutes, and a model specialised for it can label the next scene worse than the pretrained
model does, while the new scene's few samples barely move it. On the paper evaluation (README,
"Training settings"), over the first 20 s of the bottle scene after 30 s of cars, the
pretrained model scored 82.0 and 74.1 (10 s each), AMS 81.0 and 75.7, AMS with a 60 s horizon
56.1 and 52.9, with γ 20 % 74.5 and 66.9; the oracle, trained on that scene alone, 87.1 and
80.3. Seed 003 ch. 6 (RECL) generalises the idea to a zoo of experts.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RebaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    samples: int = Field(4, ge=1, le=64)  # at most this many new samples judge each phase
    margin: float = Field(0.02, ge=0.0, le=1.0)  # mIoU the base must gain (0.02: two points)


def should_rebase(base: float, running: float, margin: float) -> bool:
    """Whether the base model's score on the new samples beats the device's by ``margin``."""
    return base > running + margin
