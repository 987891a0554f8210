"""Where label maps go: local callbacks, and optionally a compact MQTT summary.

The summary (fraction of pixels per class in the latest label map) is computed only when it
is published, at a configurable rate, so it costs the frame loop nothing in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from edge_runtime.frames import Frame
from shared_schema.messages import MAX_CLASSES, Results


class ResultSink(Protocol):
    def __call__(self, frame: Frame, labels: np.ndarray, model_version: int | None) -> None: ...


def class_fractions(labels: np.ndarray, num_classes: int) -> tuple[float, ...]:
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    return tuple(float(c) for c in counts / max(labels.size, 1))


class SummaryPublisher:
    """Publishes a Results message at most ``rate_hz`` times a second."""

    def __init__(
        self,
        send: Callable[[Results], object],
        rate_hz: float,
        num_classes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        self._send = send
        self._period = 1.0 / rate_hz
        self._num_classes = min(num_classes, MAX_CLASSES)
        self._clock = clock
        self._due = clock()
        self._frames = 0

    def __call__(self, frame: Frame, labels: np.ndarray, model_version: int | None) -> None:
        self._frames += 1
        now = self._clock()
        if now < self._due:
            return
        self._due = now + self._period
        self._send(
            Results(
                frame_ts=frame.timestamp,
                frames=self._frames,
                model_version=model_version,
                class_fractions=class_fractions(labels, self._num_classes),
            )
        )
        self._frames = 0
