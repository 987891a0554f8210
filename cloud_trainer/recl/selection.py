"""RECL's safety check (seed 003 §6.3.1): the candidates (the gating network's top K experts,
the device's current model and the last model retrained for it) label the device's newest
teacher-labelled frames, which none of them trained on; the best is sent when it beats the
device's model by ``margin``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CURRENT = "current"  # the candidate name of the device's model


@dataclass(frozen=True)
class Verdict:
    scores: dict[str, float]  # mIoU of every candidate on the judged frames
    best: str  # the highest scoring candidate (the device's model on a tie)
    switch: bool  # the best beats the device's model by the margin: send it

    @property
    def gain(self) -> float:
        return self.scores[self.best] - self.scores[CURRENT]


def safety_check(scores: Mapping[str, float], margin: float) -> Verdict:
    """``scores``: each candidate's mIoU on the judged frames, by name, the device's model
    under ``CURRENT``."""
    if CURRENT not in scores:
        raise ValueError("the safety check needs the device's current model")
    scores = dict(scores)
    best = max(scores, key=lambda name: (scores[name], name == CURRENT))
    return Verdict(scores, best, best != CURRENT and scores[best] > scores[CURRENT] + margin)
