"""Prometheus exposition shared by the trainer's endpoint and the device's optional one: the
device telemetry families (the same names on both) and starting an endpoint.

Counts that only grow are counters (``amstream_device_frames_total``), levels are gauges
(``amstream_device_fps``); every sample is labelled by device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared_schema.config_files import ConfigFileError
from shared_schema.messages import Telemetry

DEVICE_GAUGES = ("fps", "latency_p50_ms", "latency_p95_ms", "spool_depth", "model_version",
                 "uptime_s")  # fmt: skip
DEVICE_COUNTERS = ("frames", "frames_sampled", "swaps", "bytes_up", "bytes_down")

# device id -> the value of a figure by name (None where it has none)
Rows = dict[str, Callable[[str], object]]


def families(kind: str, gauges: tuple[str, ...], counters: tuple[str, ...], rows: Rows
             ) -> Iterator[Metric]:  # fmt: skip
    """One family per figure, ``amstream_<kind>_<figure>``, a sample per device that has it."""
    for names, family in ((gauges, GaugeMetricFamily), (counters, CounterMetricFamily)):
        for name in names:
            metric = family(f"amstream_{kind}_{name}", f"{kind} {name}", labels=["device"])
            for device_id, value_of in sorted(rows.items()):
                value = value_of(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    metric.add_metric([device_id], float(value))
            yield metric


def telemetry_rows(devices: dict[str, Telemetry]) -> Rows:
    """The rows of devices' latest telemetry."""
    return {d: (lambda name, t=t: getattr(t, name, None)) for d, t in devices.items()}


class TelemetryCollector(Collector):
    """The device's own endpoint: its latest telemetry, as the trainer exports it."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.latest: Telemetry | None = None  # replaced whole: no lock needed

    def collect(self) -> Iterator[Metric]:
        latest = {} if self.latest is None else {self.device_id: self.latest}
        yield from families("device", DEVICE_GAUGES, DEVICE_COUNTERS, telemetry_rows(latest))


def serve(collector: Collector, host: str, port: int, field: str) -> None:
    """Serve ``collector`` on ``host:port``; a port that cannot be bound is one line naming
    ``field``, the setting that chose it."""
    registry = prometheus_client.CollectorRegistry()
    registry.register(collector)
    try:
        prometheus_client.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigFileError(
            f"{field} {port} on {host}: {exc.strerror or exc}: pick a free port, or 0 to turn"
            " the endpoint off"
        ) from exc
