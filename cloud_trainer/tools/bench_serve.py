"""``cloud-trainer bench-serve``: one trainer serving N devices, each a real edge runtime
playing a video in real time, over a real broker on loopback, for a fixed time.

Reported per N: every device's training seconds per phase and updates delivered (verified
and hot-swapped), whether every session's phases kept pace with its T_update, and the QoS 1
messages lost (published by one side and never received by the other, in both directions:
must be 0). With ``sweep``, the same run with 1 device first, so the growth of training time
per device with N is measured in the same run. ``find_capacity`` searches N for the most
devices that keep pace. Both report a training step alone (``bench_step``) beside them.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from cloud_trainer.config import TrainerConfig, load_config
from cloud_trainer.daemon import TrainerDaemon
from cloud_trainer.tools.bench_step import bench_step
from cloud_trainer.tools.emulation import EmulatedDevice, local_profile
from cloud_trainer.tools.local_broker import local_fleet

PACE_TOLERANCE = 0.2  # a session keeps pace when its phases come at most 20 % slower than T_update
WARMUP_UPDATES = 2  # T_updates at the start left out of the pace: the first segment and phase


def serve_round(
    config: TrainerConfig, video: Path, devices: int, duration_s: float, settle_s: float
) -> dict[str, object]:
    ids = [f"bench-{i}" for i in range(devices)]
    with (
        tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp,
        local_fleet(Path(tmp), ids) as secured,
    ):
        workdir, broker = Path(tmp), secured.broker
        config = config.model_copy(
            update={
                "updates": config.updates.model_copy(update={"signing_key": secured.signing_key}),
                "mqtt": broker.client_config(),
                "checkpoint": config.checkpoint.model_copy(update={"directory": workdir / "ckpt"}),
                "metrics": config.metrics.model_copy(update={"prometheus_port": 0}),
            }
        )
        daemon = TrainerDaemon(config)
        daemon.start()
        fleet = [
            EmulatedDevice(
                local_profile(
                    broker.mqtt_table(device_id),
                    workdir / device_id,
                    device_id=device_id,
                    telemetry={"results_rate_hz": 0.0},
                    model=secured.device_keys,
                ),
                video,
            )
            for device_id in ids
        ]
        try:
            started = time.monotonic()
            time.sleep(duration_s)
            window = (started + WARMUP_UPDATES * config.atr.tau_min_s, time.monotonic())
            for device in fleet:
                device.pause()
            daemon.wait_idle(settle_s)
            _wait_settled(daemon, fleet, settle_s)
            return {**_measure(daemon, fleet, devices, duration_s), **_pace(daemon, window)}
        finally:
            for device in fleet:
                device.close()
            daemon.stop()


def _wait_settled(daemon: TrainerDaemon, fleet: list[EmulatedDevice], timeout: float) -> None:
    """Until every device runs its mirror's latest file (the last update has landed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = daemon.sessions
        if all(
            d.device_id in sessions
            and d.runtime.model.sha256 == sessions[d.device_id].mirror.sha256
            for d in fleet
        ):
            return
        time.sleep(0.1)


def _pace(daemon: TrainerDaemon, window: tuple[float, float]) -> dict[str, object]:
    """Whether every session's phases kept pace with its T_update (within PACE_TOLERANCE):
    the mean time between the phases that ended in ``window`` (monotonic), from the first
    T_updates on (the first segment comes a T_update after the start). A device whose trainer
    falls behind has its segments queue up and labelled back to back, so its phases space out
    by the time the trainer's round takes; one without two phases in the window fails."""
    start, end = window
    intervals, t_update = {}, {}
    for device_id, session in daemon.sessions.items():
        ends = [t for t in session.phase_ends if start <= t <= end]
        intervals[device_id] = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else None
        t_update[device_id] = session.atr.t_update_s
    keeps = bool(intervals) and all(
        v is not None and v <= (1 + PACE_TOLERANCE) * t_update[d] for d, v in intervals.items()
    )
    return {"phase_interval_s": intervals, "t_update_s": t_update, "keeps_pace": keeps}


def _measure(
    daemon: TrainerDaemon, fleet: list[EmulatedDevice], devices: int, duration_s: float
) -> dict[str, object]:
    trainer = daemon.endpoint.counters
    up_sent = sum(d.runtime.endpoint.counters.get("sent.segment") for d in fleet)
    down_sent = trainer.get("sent.update") + trainer.get("sent.model")
    down_received = sum(
        d.runtime.endpoint.counters.get("received.update")
        + d.runtime.endpoint.counters.get("received.model")
        for d in fleet
    )
    stats = {d.device_id: daemon.sessions[d.device_id].stats for d in fleet
             if d.device_id in daemon.sessions}  # fmt: skip
    phases = {device: s.training_seconds for device, s in stats.items()}
    return {
        "devices": devices,
        "duration_s": duration_s,
        "training_seconds_per_phase": {
            device: statistics.mean(seconds) if seconds else None
            for device, seconds in phases.items()
        },
        "phases": {device: len(seconds) for device, seconds in phases.items()},
        # seconds per phase in each stage: the phase's own (phase.*) and the work around it
        "stage_seconds_per_phase": {
            device: {k: v / s.phases for k, v in sorted(s.stage_seconds.items())}
            for device, s in stats.items()
            if s.phases
        },
        "updates_delivered": [d.swaps for d in fleet],
        "in_sync": [
            d.runtime.model.sha256 == daemon.sessions[d.device_id].mirror.sha256
            for d in fleet
            if d.device_id in daemon.sessions
        ],
        "message_loss": (up_sent - trainer.get("received.segment")) + (down_sent - down_received),
        "messages": {
            "segments_sent": up_sent,
            "segments_received": trainer.get("received.segment"),
            "updates_sent": down_sent,
            "updates_received": down_received,
        },
    }


def bench_serve(
    video: Path,
    *,
    devices: int,
    duration_s: float = 60.0,
    config: TrainerConfig | None = None,
    sweep: bool = True,
    settle_s: float = 120.0,
) -> dict[str, object]:
    config = config or load_config()
    counts = [1, devices] if sweep and devices > 1 else [devices]
    rounds = [serve_round(config, video, n, duration_s, settle_s) for n in counts]
    last = rounds[-1]

    def mean_phase(run: dict[str, object]) -> float | None:
        values = [v for v in run["training_seconds_per_phase"].values() if v is not None]
        return statistics.mean(values) if values else None

    growth = {str(run["devices"]): mean_phase(run) for run in rounds}
    return {
        **_settings(config, video, duration_s),
        "devices": devices,
        "training_seconds_per_phase": last["training_seconds_per_phase"],
        "updates_delivered": last["updates_delivered"],
        "in_sync": last["in_sync"],
        "keeps_pace": last["keeps_pace"],
        "message_loss": sum(run["message_loss"] for run in rounds),
        "training_seconds_per_phase_by_devices": growth,
        "phase_breakdown": phase_breakdown(last, config.training.iterations),
        "step": bench_step(config, video),
        "rounds": rounds,
    }


def find_capacity(
    video: Path,
    *,
    max_devices: int,
    duration_s: float = 90.0,
    config: TrainerConfig | None = None,
    settle_s: float = 120.0,
) -> dict[str, object]:
    """The most emulated devices whose sessions all keep pace (``_pace``): 1, 2, 4, ... up to
    the first that does not, then a bisection between the last two counts."""
    config = config or load_config()
    rounds: dict[int, dict[str, object]] = {}

    def keeps_pace(devices: int) -> bool:
        rounds[devices] = serve_round(config, video, devices, duration_s, settle_s)
        return bool(rounds[devices]["keeps_pace"])

    low, high = 0, 1
    while high <= max_devices and keeps_pace(high):
        low, high = high, 2 * high
    high = min(high, max_devices + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if keeps_pace(middle) else (low, middle)
    return {
        **_settings(config, video, duration_s),
        "capacity": low,
        "max_devices": max_devices,
        "pace_tolerance": PACE_TOLERANCE,
        "message_loss": sum(run["message_loss"] for run in rounds.values()),
        "step": bench_step(config, video),
        "rounds": [rounds[n] for n in sorted(rounds)],
    }


def _settings(config: TrainerConfig, video: Path, duration_s: float) -> dict[str, object]:
    return {
        "video": str(video),
        "duration_s": duration_s,
        "training": {
            "resolution": list(config.training.resolution),
            "iterations": config.training.iterations,
            "batch_size": config.training.batch_size,
            "device": config.training.device,
            "t_update_s": config.atr.tau_min_s,
        },
    }


def phase_breakdown(run: dict[str, object], iterations: int) -> dict[str, object]:
    """A round's stages per phase, averaged over its devices, and a training step's share of
    each (what a step spends outside the network: batch assembly and the optimizer)."""
    per_device = list(run["stage_seconds_per_phase"].values())  # type: ignore[union-attr]
    if not per_device:
        return {}
    stages = sorted({k for d in per_device for k in d})
    mean = {k: round(statistics.mean(d.get(k, 0.0) for d in per_device), 4) for k in stages}
    # a step's stages: all of the phase's but the selection, made once a phase
    step = {k.removeprefix("phase."): v / iterations for k, v in mean.items()
            if k.startswith("phase.") and k != "phase.select"}  # fmt: skip
    step_s = sum(step.values())
    network = step.get("forward", 0.0) + step.get("backward", 0.0)
    return {
        "seconds_per_phase": mean,
        "step_seconds": round(step_s, 4),
        "step_stage_seconds": {k: round(v, 4) for k, v in step.items()},
        "step_outside_network": round(1 - network / step_s, 3) if step_s else None,
    }
