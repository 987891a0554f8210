"""Runtime statistics and the periodic telemetry report (SPEC §4: fps, latency percentiles,
frames sampled, swaps, bytes up/down, spool depth, active model version, counters)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import numpy as np

from shared_schema.compat import UTC
from shared_schema.messages import MAX_COUNTERS, OpaTelemetry, Telemetry


class FrameStats:
    """Counts frames, keeps the latest inference latencies for percentiles, and sums the seconds
    each stage of the frame path took since the start (``stages``): the inference latencies
    under ``inference``, the others where ``timed`` records them."""

    def __init__(self, window: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._latencies: deque[float] = deque(maxlen=window)
        self._stages: dict[str, float] = {}
        self._lock = threading.Lock()
        self.started = clock()
        self.frames = 0
        self.frames_sampled = 0

    def frame(self, latency_s: float, sampled: bool) -> None:
        with self._lock:
            self.frames += 1
            self.frames_sampled += sampled
            self._latencies.append(latency_s)
            self._add_stage("inference", latency_s)

    @contextmanager
    def timed(self, name: str, clock: Callable[[], float] = time.perf_counter) -> Iterator[None]:
        """Add the time the block takes to stage ``name``: wall time by default; a thread
        working beside the frame loop passes ``time.thread_time``, as its wall time is mostly
        waiting for a core."""
        started = clock()
        try:
            yield
        finally:
            elapsed = clock() - started
            with self._lock:
                self._add_stage(name, elapsed)

    def stages(self) -> dict[str, float]:
        """Seconds per stage since the start."""
        with self._lock:
            return dict(self._stages)

    def _add_stage(self, name: str, seconds: float) -> None:  # with the lock held
        self._stages[name] = self._stages.get(name, 0.0) + seconds

    def latency_ms(self, *percentiles: float) -> list[float]:
        with self._lock:
            window = np.fromiter(self._latencies, float)
        if window.size == 0:
            return [0.0] * len(percentiles)
        return [float(v) * 1000.0 for v in np.percentile(window, percentiles)]

    def uptime_s(self) -> float:
        return self._clock() - self.started


class TelemetryReporter:
    """Builds one Telemetry message per interval; fps (and the state's Kbps) are measured over
    that interval."""

    def __init__(self, stats: FrameStats, clock: Callable[[], float] = time.monotonic) -> None:
        self._stats = stats
        self._clock = clock
        self._last = (clock(), 0, 0, 0)  # when, frames, bytes up, bytes down
        self._kbps = (0.0, 0.0)  # up, down over the last interval
        self._version: int | None = None
        self._updated_at: str | None = None  # when the model version last changed (UTC)

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
        then, frames_then, up_then, down_then = self._last
        self._last = (now, frames, bytes_up, bytes_down)

        def per_s(count: int) -> float:
            return count / (now - then) if now > then else 0.0

        self._kbps = (
            per_s(bytes_up - up_then) * 8 / 1000,
            per_s(bytes_down - down_then) * 8 / 1000,
        )
        p50, p95 = self._stats.latency_ms(50, 95)
        return Telemetry(
            uptime_s=self._stats.uptime_s(),
            fps=per_s(frames - frames_then),
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

    def state(self, telemetry: Telemetry, *, sampling_fps: float) -> dict[str, object]:
        """The device's state for people (the ``state`` topic): what runs, how fast, what it
        costs, over the interval of ``telemetry``, the last report."""
        if telemetry.model_version != self._version:
            if self._version is not None:
                self._updated_at = datetime.now(UTC).isoformat(timespec="seconds")
            self._version = telemetry.model_version
        return {
            "model_version": telemetry.model_version,
            "last_update": self._updated_at,
            "fps": round(telemetry.fps, 2),
            "latency_p95_ms": round(telemetry.latency_p95_ms, 1),
            "sampling_fps": round(sampling_fps, 3),
            "up_kbps": round(self._kbps[0], 1),
            "down_kbps": round(self._kbps[1], 1),
            "swaps": telemetry.swaps,
            "spool_depth": telemetry.spool_depth,
            "uptime_s": round(telemetry.uptime_s),
        }
