"""Segmentation agreement: mIoU over a stream's class subset (SPEC §7)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# A class belongs to the stream's subset when it covers more than this share of teacher pixels.
SUBSET_MIN_FRACTION = 0.005


def miou(prediction: np.ndarray, target: np.ndarray, classes: Iterable[int]) -> float:
    """Mean IoU over ``classes``; a class absent from both maps is left out of the mean, and
    two maps that share none of the classes count as full agreement."""
    ious = []
    for c in classes:
        p, t = prediction == c, target == c
        union = np.count_nonzero(p | t)
        if union:
            ious.append(np.count_nonzero(p & t) / union)
    return float(np.mean(ious)) if ious else 1.0


class ClassSubset:
    """The classes the teacher actually sees in a stream: background plus every class above
    ``min_fraction`` of all teacher pixels so far."""

    def __init__(self, num_classes: int, min_fraction: float = SUBSET_MIN_FRACTION) -> None:
        self.num_classes = num_classes
        self.min_fraction = min_fraction
        self.counts = np.zeros(num_classes, np.int64)

    def observe(self, teacher_labels: np.ndarray) -> None:
        self.counts += np.bincount(teacher_labels.ravel(), minlength=self.num_classes)[
            : self.num_classes
        ]

    @property
    def classes(self) -> tuple[int, ...]:
        total = self.counts.sum()
        if total == 0:
            return (0,)
        share = self.counts / total
        return tuple(sorted({0} | {int(c) for c in np.flatnonzero(share > self.min_fraction)}))
