"""The trainer's time-stamped sample buffer (seed 002 Algorithm 1, B): (frame, teacher labels)
pairs from the last T_horizon seconds of a device's video, kept at the student's input size,
from which each training step draws a mini-batch uniformly at random, as random crops when the
training resolution is smaller: objects keep the scale the device sees them at (training on
downscaled frames teaches the student a scale it never runs at)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.frames import Frame


@dataclass(frozen=True)
class Sample:
    timestamp: float  # the frame's time on the device's clock
    rgb: np.ndarray  # (H, W, 3) uint8 at the student's input size
    labels: np.ndarray  # (H, W) uint8 teacher labels, the same size


class SampleBuffer:
    def __init__(self, horizon_s: float) -> None:
        if horizon_s <= 0:
            raise ValueError("horizon_s must be positive")
        self.horizon_s = horizon_s
        self.start = -float("inf")  # samples before this time are not kept (``restart``)
        self._samples: list[Sample] = []  # in timestamp order (segments may arrive out of it)

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: Sample) -> None:
        """Keep ``sample`` (unless it is before ``start``); forget what is older than the
        horizon before the newest sample."""
        if sample.timestamp < self.start:
            return
        bisect.insort(self._samples, sample, key=lambda s: s.timestamp)
        cutoff = self._samples[-1].timestamp - self.horizon_s
        first_kept = bisect.bisect_left(self._samples, cutoff, key=lambda s: s.timestamp)
        del self._samples[:first_kept]

    def restart(self, at: float) -> None:
        """Forget the samples before ``at`` and keep none from before it from now on: the
        scene they showed is gone (``ams.rebase``)."""
        self.start = max(self.start, at)
        del self._samples[: bisect.bisect_left(self._samples, at, key=lambda s: s.timestamp)]

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def newest(self, count: int) -> list[Sample]:
        """The ``count`` newest samples, oldest first."""
        return self._samples[len(self._samples) - count :] if count > 0 else []

    def batch(
        self,
        size: int,
        rng: np.random.Generator,
        crop: tuple[int, int] | None = None,
        held_out: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A mini-batch drawn uniformly (with replacement when the buffer is smaller) from all
        but the ``held_out`` newest samples; with ``crop`` (height, width), a window at a
        uniformly random place in each sample."""
        pool = len(self._samples) - held_out
        if pool <= 0:
            raise ValueError("the buffer holds nothing to draw from")
        picks = rng.choice(pool, size=size, replace=size > pool)
        windows = [_window(self._samples[i], crop, rng) for i in picks]
        return np.stack([rgb for rgb, _ in windows]), np.stack([lab for _, lab in windows])


def _window(
    sample: Sample, crop: tuple[int, int] | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    height, width = sample.labels.shape
    if crop is None:
        return sample.rgb, sample.labels
    h, w = min(crop[0], height), min(crop[1], width)
    top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    return sample.rgb[top : top + h, left : left + w], sample.labels[top : top + h, left : left + w]


def labelled_samples(
    frames: Sequence[Frame], labels: np.ndarray, size: tuple[int, int]
) -> list[Sample]:
    """Samples of decoded frames and their teacher labels, both at ``size`` (height, width)."""
    height, width = size
    return [
        Sample(frame.timestamp, frame.rgb(width, height), resize_labels(lab, height, width))
        for frame, lab in zip(frames, labels, strict=True)
    ]


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map (sample centres, like the image scaler)."""
    rows = ((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64)
    return labels[rows[:, None], cols[None, :]].astype(np.uint8)
