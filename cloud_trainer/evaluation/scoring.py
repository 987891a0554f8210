"""Per-frame agreement between the device's labels and the teacher's (SPEC §7).

A frame is kept as per-class intersection and union pixel counts, so its mIoU can be taken over
any class subset afterwards: the stream's subset (classes over 0.5 % of the teacher's pixels,
plus background) is known only once the whole stream has been labelled.
``miou_from_counts(iou_counts(p, t), classes)`` equals ``metrics.miou(p, t, classes)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def iou_counts(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(2, num_classes) int64: per class, pixels in both maps and pixels in either."""
    pairs = target.astype(np.int64).ravel() * num_classes + prediction.astype(np.int64).ravel()
    confusion = np.bincount(pairs, minlength=num_classes * num_classes)[: num_classes**2]
    confusion = confusion.reshape(num_classes, num_classes)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return np.stack([inter, union])


def miou_from_counts(counts: np.ndarray, classes: Iterable[int]) -> np.ndarray | float:
    """mIoU over ``classes`` of one frame's counts (2, C), or of many frames' (N, 2, C);
    classes absent from both maps are left out, and a frame without any counts as 1."""
    chosen = list(classes)
    inter, union = counts[..., 0, chosen], counts[..., 1, chosen]
    present = union > 0
    ious = np.where(present, inter / np.maximum(union, 1), 0.0)
    n = present.sum(-1)
    result = np.where(n > 0, ious.sum(-1) / np.maximum(n, 1), 1.0)
    return float(result) if result.ndim == 0 else result
