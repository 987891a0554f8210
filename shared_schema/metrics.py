"""Segmentation agreement: mIoU over a stream's class subset (SPEC §7)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

# A class belongs to the stream's subset (what mIoU is scored over) above this share of teacher
# pixels; it counts as seen by the teacher (what the training loss covers) above the second.
SUBSET_MIN_FRACTION = 0.005
SEEN_MIN_FRACTION = 0.0001


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
    """The classes of a stream, from the teacher's labels so far (background always counts).

    ``classes``: above ``min_fraction`` of all teacher pixels (SPEC §7), what agreement is
    scored over. ``seen``: anything the teacher labels beyond stray pixels, what training
    covers: a class below the scoring threshold still must not be trained away (a stream whose
    people cover 0.4 % of the picture would otherwise teach the student to see none).
    """

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
        return self._above(self.min_fraction)

    @property
    def seen(self) -> tuple[int, ...]:
        return self._above(SEEN_MIN_FRACTION)

    def _above(self, fraction: float) -> tuple[int, ...]:
        total = self.counts.sum()
        if total == 0:
            return (0,)
        share = self.counts / total
        return tuple(sorted({0} | {int(c) for c in np.flatnonzero(share > fraction)}))


def label_names(path: Path) -> list[str]:
    """A labels file's class names: one per line, class 0 first, blank lines skipped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
