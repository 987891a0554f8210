"""The trainer's Prometheus endpoint: each session's training figures and each device's
telemetry, as the trainer last heard them, labelled by device.

Counts that only grow are Prometheus counters (``amstream_session_phases_total``); levels are
gauges (``amstream_device_fps``). Values are read at scrape time from the last report of each
session (every ``[metrics] interval_s``) and the last telemetry of each device.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import fields

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_trainer.config import MetricsConfig
from cloud_trainer.session import SessionStats
from shared_schema import prometheus
from shared_schema.messages import Telemetry
from shared_schema.prometheus import (
    DEVICE_COUNTERS,
    DEVICE_GAUGES,
    Rows,
    families,
    telemetry_rows,
)

# A session's levels; every number of SessionStats is a count (one truth: the dataclass).
SESSION_GAUGES = ("mirror_version", "device_version", "sampling_rate_fps", "t_update_s",
                  "training_seconds_last", "training_seconds_mean", "buffer_samples")  # fmt: skip
SESSION_COUNTERS = tuple(
    f.name for f in fields(SessionStats) if f.type in ("int", "float", int, float)
)


class TrainerMetrics(Collector):
    """What the endpoint exports; the daemon feeds it as reports and telemetry arrive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, dict[str, object]] = {}
        self._devices: dict[str, Telemetry] = {}
        self._online: dict[str, bool] = {}
        self._trainer: dict[str, float] = {}

    def session(self, figures: dict[str, object]) -> None:
        with self._lock:
            self._sessions[str(figures["device_id"])] = dict(figures)

    def telemetry(self, device_id: str, telemetry: Telemetry) -> None:
        with self._lock:
            self._devices[device_id] = telemetry

    def online(self, device_id: str, online: bool) -> None:
        with self._lock:
            self._online[device_id] = online

    def serve(self, config: MetricsConfig) -> None:
        """Export on ``[metrics] prometheus_host:prometheus_port``, where a port is set."""
        if config.prometheus_port:
            prometheus.serve(self, config.prometheus_host, config.prometheus_port,
                             "metrics.prometheus_port")  # fmt: skip

    def trainer(self, figures: dict[str, float]) -> None:
        """Trainer-wide levels (the model zoo's)."""
        with self._lock:
            self._trainer = dict(figures)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sessions, devices = dict(self._sessions), dict(self._devices)
            online, trainer = dict(self._online), dict(self._trainer)
        session_rows: Rows = {d: f.get for d, f in sessions.items()}
        yield from families("session", SESSION_GAUGES, SESSION_COUNTERS, session_rows)
        yield from families("device", DEVICE_GAUGES, DEVICE_COUNTERS, telemetry_rows(devices))
        up = GaugeMetricFamily("amstream_device_online", "1 if the device's status is online",
                               labels=["device"])  # fmt: skip
        for device_id, is_online in sorted(online.items()):
            up.add_metric([device_id], float(is_online))
        yield up
        for name, value in sorted(trainer.items()):
            yield GaugeMetricFamily(f"amstream_trainer_{name}", f"trainer {name}", value=value)
