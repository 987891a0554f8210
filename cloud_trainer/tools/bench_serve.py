"""``cloud-trainer bench-serve``: one trainer serving N devices, each a real edge runtime
playing a video in real time, over a real broker on loopback, for a fixed time.

Reported per N: every device's training seconds per phase and updates delivered (verified
and hot-swapped), whether every session's phases kept pace with its T_update, and the QoS 1
messages lost (published by one side and never received by the other, in both directions:
must be 0). With ``sweep``, the same run with 1 device first, so the growth of training time
per device with N is measured in the same run. ``find_capacity`` searches N for the most
devices that keep pace. Both report a training step alone (``bench_step``) beside them.

A round runs the single-process daemon or, with ``on_ray``, the same sessions as Ray actors
on a Ray cluster of this machine's own, behind one MQTT front (``cloud_trainer/scaleout``):
``ray_overhead`` runs both, one after the other, on the same cores.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cloud_trainer.config import TrainerConfig, load_config
from cloud_trainer.daemon import TrainerDaemon
from cloud_trainer.session import SessionStats
from cloud_trainer.tools.bench_step import bench_step
from cloud_trainer.tools.emulation import EmulatedDevice, local_profile
from cloud_trainer.tools.local_broker import local_fleet

PACE_TOLERANCE = 0.2  # a session keeps pace when its phases come at most 20 % slower than T_update
WARMUP_UPDATES = 2  # T_updates at the start left out of the pace: the first segment and phase


@dataclass(frozen=True)
class _Seen:
    """What a round reads of a session."""

    stats: SessionStats
    phase_ends: list[float]  # time.monotonic(): one clock for every process of this machine
    t_update_s: float
    mirror_sha256: str
    busy: bool


class _Daemon:
    """The single process."""

    def __init__(self, config: TrainerConfig, ids: list[str]) -> None:
        self.daemon = TrainerDaemon(config)
        self.daemon.start()

    def sessions(self) -> dict[str, _Seen]:
        return {
            device_id: _Seen(
                s.stats, list(s.phase_ends), s.atr.t_update_s, s.mirror.sha256, s.has_work
            )
            for device_id, s in list(self.daemon.sessions.items())
        }

    def counter(self, name: str) -> int:
        return self.daemon.endpoint.counters.get(name)

    def wait_idle(self, timeout: float) -> None:
        self.daemon.wait_idle(timeout)

    def stop(self) -> None:
        self.daemon.stop()


class _OnRay:
    """The sessions as Ray actors on a cluster of this process's own, behind one front; every
    actor is scheduled (logical CPUs for all) and trains with as many threads as the single
    process (``[ray] num_cpus``: this machine's cores), so both share the same cores (and, on
    cuda, an equal share of one GPU)."""

    def __init__(self, config: TrainerConfig, ids: list[str]) -> None:
        import ray

        from cloud_trainer.scaleout.front import RayFront

        self._ray, self._ids = ray, ids
        cores = os.cpu_count() or 1
        shares = {"num_cpus": float(cores)}
        if config.training.device.startswith("cuda"):  # one GPU shared by the sessions
            shares["num_gpus"] = (10_000 // len(ids)) / 10_000  # Ray's resolution: 0.0001
        config = config.model_copy(update={"ray": config.ray.model_copy(update=shares)})
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=cores * len(ids), namespace=config.ray.namespace,
                 include_dashboard=False, logging_level="WARNING", log_to_driver=False)  # fmt: skip
        self.front = RayFront(config, "local")
        self.front.start()
        self._counters: dict[str, dict[str, int]] = {}

    def _views(self) -> dict[str, dict]:
        from cloud_trainer.scaleout.actor import actor_name

        alive = set(self._ray.util.list_named_actors())
        names = {d: actor_name(d) for d in self._ids if actor_name(d) in alive}
        refs = {d: self._ray.get_actor(n).view.remote() for d, n in names.items()}
        return {d: self._ray.get(ref, timeout=60) for d, ref in refs.items()}

    def sessions(self) -> dict[str, _Seen]:
        views = self._views()
        self._counters = {d: v["counters"] for d, v in views.items()}
        return {
            d: _Seen(
                SessionStats(**v["stats"]),
                v["phase_ends"],
                v["t_update_s"],
                v["mirror_sha256"],
                v["has_work"],
            )
            for d, v in views.items()
        }

    def counter(self, name: str) -> int:
        """Summed over the session actors, as last read by ``sessions``."""
        return sum(c.get(name, 0) for c in self._counters.values())

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(s.busy for s in self.sessions().values()):
            time.sleep(0.2)

    def stop(self) -> None:
        try:
            self.front.stop()
        finally:
            self._ray.shutdown()


def serve_round(
    config: TrainerConfig,
    video: Path,
    devices: int,
    duration_s: float,
    settle_s: float,
    on_ray: bool = False,
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
        trainer = (_OnRay if on_ray else _Daemon)(config, ids)
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
            trainer.wait_idle(settle_s)
            sessions = _wait_settled(trainer, fleet, settle_s)
            return {**_measure(trainer, sessions, fleet, devices, duration_s),
                    **_pace(sessions, window), "on_ray": on_ray}  # fmt: skip
        finally:
            for device in fleet:
                device.close()
            trainer.stop()


def _wait_settled(
    trainer: _Daemon | _OnRay, fleet: list[EmulatedDevice], timeout: float
) -> dict[str, _Seen]:
    """Until every device runs its mirror's latest file (the last update has landed); returns
    the sessions as they are then."""
    deadline = time.monotonic() + timeout
    while True:
        sessions = trainer.sessions()
        if time.monotonic() > deadline or all(
            d.device_id in sessions
            and d.runtime.model.sha256 == sessions[d.device_id].mirror_sha256
            for d in fleet
        ):
            return sessions
        time.sleep(0.1)


def _pace(sessions: dict[str, _Seen], window: tuple[float, float]) -> dict[str, object]:
    """Whether every session's phases kept pace with its T_update (within PACE_TOLERANCE):
    the mean time between the phases that ended in ``window`` (monotonic), from the first
    T_updates on (the first segment comes a T_update after the start). A device whose trainer
    falls behind has its segments queue up and labelled back to back, so its phases space out
    by the time the trainer's round takes; one without two phases in the window fails."""
    start, end = window
    intervals, t_update = {}, {}
    for device_id, session in sessions.items():
        ends = [t for t in session.phase_ends if start <= t <= end]
        intervals[device_id] = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else None
        t_update[device_id] = session.t_update_s
    keeps = bool(intervals) and all(
        v is not None and v <= (1 + PACE_TOLERANCE) * t_update[d] for d, v in intervals.items()
    )
    return {"phase_interval_s": intervals, "t_update_s": t_update, "keeps_pace": keeps}


def _measure(
    trainer: _Daemon | _OnRay,
    sessions: dict[str, _Seen],
    fleet: list[EmulatedDevice],
    devices: int,
    duration_s: float,
) -> dict[str, object]:
    up_sent = sum(d.runtime.endpoint.counters.get("sent.segment") for d in fleet)
    down_sent = trainer.counter("sent.update") + trainer.counter("sent.model")
    down_received = sum(
        d.runtime.endpoint.counters.get("received.update")
        + d.runtime.endpoint.counters.get("received.model")
        for d in fleet
    )
    stats = {d.device_id: sessions[d.device_id].stats for d in fleet if d.device_id in sessions}
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
            d.runtime.model.sha256 == sessions[d.device_id].mirror_sha256
            for d in fleet
            if d.device_id in sessions
        ],
        "message_loss": (up_sent - trainer.counter("received.segment"))
        + (down_sent - down_received),
        "messages": {
            "segments_sent": up_sent,
            "segments_received": trainer.counter("received.segment"),
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
    on_ray: bool = False,
) -> dict[str, object]:
    config = config or load_config()
    counts = [1, devices] if sweep and devices > 1 else [devices]
    rounds = [serve_round(config, video, n, duration_s, settle_s, on_ray) for n in counts]
    last = rounds[-1]
    growth = {str(run["devices"]): _mean_phase(run) for run in rounds}
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
    on_ray: bool = False,
    with_step: bool = True,
) -> dict[str, object]:
    """The most emulated devices whose sessions all keep pace (``_pace``): 1, 2, 4, ... up to
    the first that does not, then a bisection between the last two counts."""
    config = config or load_config()
    rounds: dict[int, dict[str, object]] = {}

    def keeps_pace(devices: int) -> bool:
        rounds[devices] = serve_round(config, video, devices, duration_s, settle_s, on_ray)
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
        **({"step": bench_step(config, video)} if with_step else {}),
        "rounds": [rounds[n] for n in sorted(rounds)],
    }


def ray_overhead(
    video: Path, *, max_devices: int, duration_s: float, config: TrainerConfig | None = None
) -> dict[str, object]:
    """The capacity of the single process and of the same sessions on Ray, on the same cores,
    one after the other (issue 19's target: at most 10 % fewer devices on Ray), and the
    training seconds per phase at each device count both ran."""
    config = config or load_config()
    single = find_capacity(video, max_devices=max_devices, duration_s=duration_s, config=config)
    on_ray = find_capacity(video, max_devices=max_devices, duration_s=duration_s, config=config,
                           on_ray=True, with_step=False)  # fmt: skip
    both = {r["devices"]: r for r in single["rounds"]}
    per_phase = {}
    for run in on_ray["rounds"]:
        base = both.get(run["devices"])
        seconds = [_mean_phase(r) for r in (base, run)] if base else []
        if len(seconds) == 2 and None not in seconds:
            per_phase[str(run["devices"])] = {
                "single_s": round(seconds[0], 3),
                "ray_s": round(seconds[1], 3),
                "ratio": round(seconds[1] / seconds[0], 3),
            }
    capacity = single["capacity"]
    return {
        "capacity": {"single": capacity, "ray": on_ray["capacity"]},
        "fewer_devices_on_ray": (round(1 - on_ray["capacity"] / capacity, 3) if capacity else None),
        "training_seconds_per_phase": per_phase,
        "message_loss": single["message_loss"] + on_ray["message_loss"],
        "single": single,
        "ray": on_ray,
    }


def _mean_phase(run: dict[str, object]) -> float | None:
    values = [v for v in run["training_seconds_per_phase"].values() if v is not None]
    return statistics.mean(values) if values else None


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
