"""Runtime statistics and the periodic telemetry report (SPEC §4: fps, latency percentiles,
frames sampled, swaps, bytes up/down, spool depth, active model version, counters)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from shared_schema.messages import MAX_COUNTERS, OpaTelemetry, Telemetry


class FrameStats:
    """Counts frames and keeps the latest inference latencies, for percentiles."""

    def __init__(self, window: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._latencies: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.started = clock()
        self.frames = 0
        self.frames_sampled = 0

    def frame(self, latency_s: float, sampled: bool) -> None:
        with self._lock:
            self.frames += 1
            self.frames_sampled += sampled
            self._latencies.append(latency_s)

    def latency_ms(self, *percentiles: float) -> list[float]:
        with self._lock:
            window = np.fromiter(self._latencies, float)
        if window.size == 0:
            return [0.0] * len(percentiles)
        return [float(v) * 1000.0 for v in np.percentile(window, percentiles)]

    def uptime_s(self) -> float:
        return self._clock() - self.started


class TelemetryReporter:
    """Builds one Telemetry message per interval; fps is measured over that interval."""

    def __init__(self, stats: FrameStats, clock: Callable[[], float] = time.monotonic) -> None:
        self._stats = stats
        self._clock = clock
        self._last = (clock(), 0)

    def report(
        self,
        *,
        bytes_up: int,
        bytes_down: int,
        swaps: int,
        spool_depth: int,
        model_version: int | None,
        counters: dict[str, int],
        opa: OpaTelemetry | None = None,
    ) -> Telemetry:
        now, frames = self._clock(), self._stats.frames
        then, frames_then = self._last
        self._last = (now, frames)
        p50, p95 = self._stats.latency_ms(50, 95)
        return Telemetry(
            uptime_s=self._stats.uptime_s(),
            fps=(frames - frames_then) / (now - then) if now > then else 0.0,
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            frames=frames,
            frames_sampled=self._stats.frames_sampled,
            swaps=swaps,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            spool_depth=spool_depth,
            model_version=model_version,
            counters=dict(sorted(counters.items())[:MAX_COUNTERS]),
            opa=opa,
        )
