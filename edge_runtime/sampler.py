"""Which frames go up to the trainer: a rate r set by the trainer (seed 002 §3.2), on frame time.

Samples are due on a grid of period 1/r anchored at the first frame, so a 10 fps video sampled
at 1 fps keeps exactly every tenth frame. After a gap (a stalled source, a lower rate) the grid
restarts at the next frame instead of bursting to catch up.
"""

from __future__ import annotations

import threading


class Sampler:
    def __init__(self, rate_fps: float, *, min_fps: float = 0.1, max_fps: float = 1.0) -> None:
        if not 0 < min_fps <= max_fps:
            raise ValueError("need 0 < min_fps <= max_fps")
        self.min_fps = min_fps
        self.max_fps = max_fps
        self._lock = threading.Lock()
        self._rate = self._clip(rate_fps)
        self._next: float | None = None  # when the next sample is due, in frame time
        self._last: float | None = None

    @property
    def rate_fps(self) -> float:
        return self._rate

    def set_rate(self, rate_fps: float) -> float:
        """Apply the trainer's rate, clipped to this device's bounds; returns the rate in force."""
        with self._lock:
            self._rate = self._clip(rate_fps)
            if self._last is not None:
                self._next = self._last + 1.0 / self._rate
            return self._rate

    def offer(self, timestamp: float, *, cut: bool = False) -> bool:
        """True if the frame taken at ``timestamp`` (seconds, non-decreasing) is a sample. A
        scene ``cut`` makes it one and puts the rate at its maximum until the trainer sets one
        again (under the same lock: a control landing between the two cannot unsample it)."""
        with self._lock:
            if cut:
                self._rate, self._next = self.max_fps, timestamp
            if self._next is None:
                self._next = timestamp
            if timestamp < self._next:
                return False
            period = 1.0 / self._rate
            self._next += period
            if self._next <= timestamp:
                self._next = timestamp + period
            self._last = timestamp
            return True

    def _clip(self, rate_fps: float) -> float:
        return min(max(rate_fps, self.min_fps), self.max_fps)
