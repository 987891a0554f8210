"""Who joins the zoo and who leaves it (seed 003 §6.3.3).

A retrained model is *promising* when the safety check finds it at least α above every other
candidate (the gating network's top K and the device's current model); promising models wait
in a queue, and join the zoo together once ``queue`` of them wait (then the gating network is
updated once for all of them). An expert picked fewer than η times in the last q selections
leaves, once it has been in the zoo for q selections.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from cloud_trainer.recl.zoo import ExpertZoo


def promising(retrained: float, others: Sequence[float], alpha: float) -> bool:
    """§6.3.3: the retrained model beats all the other candidates by α."""
    return all(retrained >= other + alpha for other in others)


@dataclass(frozen=True)
class Candidate:
    """A retrained model waiting to join the zoo."""

    data: bytes
    origin: str
    classes: tuple[int, ...]
    score: float  # its safety-check mIoU when it was found promising
    state: bytes | None = None  # the training state under it (see ExpertZoo.add)


@dataclass
class AdmissionQueue:
    size: int
    waiting: list[Candidate] = field(default_factory=list)

    def offer(self, candidate: Candidate) -> list[Candidate]:
        """Queue ``candidate``; the whole queue, emptied, once it holds ``size``."""
        self.waiting.append(candidate)
        if len(self.waiting) < self.size:
            return []
        ready, self.waiting = self.waiting, []
        return ready


def to_prune(zoo: ExpertZoo, eta: int) -> list[str]:
    """Experts picked fewer than η times in the zoo's remembered selections (its last q),
    among those that have been in the zoo for all of them."""
    window = zoo.recent.maxlen or 0
    if len(zoo.recent) < window:
        return []  # fewer than q selections yet: nobody has had its chance
    picks = Counter(zoo.recent)
    return [
        e.id for e in zoo.experts if zoo.selections - e.joined_at >= window and picks[e.id] < eta
    ]
