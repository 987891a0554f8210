"""The trainer's time-stamped sample buffer (seed 002 Algorithm 1, B): (frame, teacher labels)
pairs from the last T_horizon seconds of a device's video, kept at the student's input size,
from which each training step draws a mini-batch uniformly at random, as random crops when the
training resolution is smaller: objects keep the scale the device sees them at (training on
downscaled frames teaches the student a scale it never runs at)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from edge_runtime.frames import Frame


@dataclass(frozen=True)
class Sample:
    timestamp: float  # the frame's time on the device's clock
    rgb: np.ndarray  # (H, W, 3) uint8 at the student's input size
    labels: np.ndarray  # (H, W) uint8 teacher labels, the same size
    # (C, h, w) float16 teacher logits on a coarse grid (``Teacher.scores``), for KL distillation
    soft: np.ndarray | None = None


class Batch(NamedTuple):
    rgb: np.ndarray  # (N, h, w, 3) uint8
    labels: np.ndarray  # (N, h, w) uint8
    soft: torch.Tensor | None  # (N, C, h, w) float32 teacher logits, where the samples have them


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
        """The ``count`` newest samples (all of them, if there are fewer), oldest first."""
        return self._samples[max(0, len(self._samples) - count) :] if count > 0 else []

    def batch(
        self,
        size: int,
        rng: np.random.Generator,
        crop: tuple[int, int] | None = None,
        held_out: int = 0,
    ) -> Batch:
        """A mini-batch drawn uniformly (with replacement when the buffer is smaller) from all
        but the ``held_out`` newest samples; with ``crop`` (height, width), a window at a
        uniformly random place in each sample."""
        pool = len(self._samples) - held_out
        if pool <= 0:
            raise ValueError("the buffer holds nothing to draw from")
        picks = rng.choice(pool, size=size, replace=size > pool)
        windows = [_window(self._samples[i], crop, rng) for i in picks]
        soft = [s for _, _, s in windows]
        return Batch(
            np.stack([rgb for rgb, _, _ in windows]),
            np.stack([lab for _, lab, _ in windows]),
            None if any(s is None for s in soft) else torch.stack(soft),  # type: ignore[arg-type]
        )


def _window(
    sample: Sample, crop: tuple[int, int] | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
    height, width = sample.labels.shape
    if crop is None:
        top, left, h, w = 0, 0, height, width
    else:
        h, w = min(crop[0], height), min(crop[1], width)
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    rows, cols = slice(top, top + h), slice(left, left + w)
    soft = None if sample.soft is None else soft_logits(sample.soft, height, width)[:, rows, cols]
    return sample.rgb[rows, cols], sample.labels[rows, cols], soft


def soft_logits(coarse: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(C, height, width) float32 logits from the teacher's coarse grid: bilinear, corners
    aligned, as DeepLab upsamples its own logits."""
    grid = torch.from_numpy(coarse.astype(np.float32))[None]
    return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=True)[0]


def labelled_samples(
    frames: Sequence[Frame],
    labels: np.ndarray,
    size: tuple[int, int],
    soft: np.ndarray | None = None,
) -> list[Sample]:
    """Samples of decoded frames and their teacher labels, both at ``size`` (height, width),
    with the teacher's coarse logits where given."""
    height, width = size
    scores = [None] * len(frames) if soft is None else list(soft)
    return [
        Sample(frame.timestamp, frame.rgb(width, height), resize_labels(lab, height, width), s)
        for frame, lab, s in zip(frames, labels, scores, strict=True)
    ]


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map (sample centres, like the image scaler)."""
    rows = ((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64)
    return labels[rows[:, None], cols[None, :]].astype(np.uint8)
