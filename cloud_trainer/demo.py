"""``cloud-trainer demo``: the whole loop on one machine, on a real video.

A local mosquitto, the trainer daemon and one edge runtime (the ``cpu`` profile) playing the
video in real time. Every few seconds a line shows what the device runs and how far its labels
agree with the teacher's (mIoU over the stream's classes, on the frame just processed) as
updates arrive. Training uses lighter settings than the default (a smaller resolution and K),
so that one CPU keeps up with one device; they are printed at the start.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from cloud_trainer.config import TrainerConfig, load_config
from cloud_trainer.daemon import TrainerDaemon
from cloud_trainer.emulation import local_profile
from cloud_trainer.local_broker import LocalBroker
from cloud_trainer.metrics import ClassSubset, miou
from cloud_trainer.teacher import Teacher, load_teacher
from edge_runtime.frames import Frame
from edge_runtime.runtime import EdgeRuntime, install_signal_handlers
from edge_runtime.sources import open_source

DEMO_TRAINING = {"resolution": (257, 257), "iterations": 8, "batch_size": 2}


def demo_trainer_config(broker: LocalBroker, workdir: Path) -> TrainerConfig:
    config = load_config()
    return config.model_copy(
        update={
            "mqtt": broker.client_config(),
            "training": config.training.model_copy(update=DEMO_TRAINING),
            "checkpoint": config.checkpoint.model_copy(update={"directory": workdir / "trainer"}),
        }
    )


class AgreementProbe:
    """Every ``every_s`` seconds of video, the device's labels on the current frame scored
    against the teacher's (a second teacher instance: engines are not shared across threads)."""

    def __init__(self, teacher: Teacher, every_s: float) -> None:
        self._teacher = teacher
        self._every_s = every_s
        self._next = 0.0
        self.subset = ClassSubset(21)
        self.latest: float | None = None
        self.history: list[tuple[float, int | None, float]] = []

    def __call__(self, frame: Frame, labels: np.ndarray, version: int | None) -> None:
        if frame.timestamp < self._next:
            return
        self._next = frame.timestamp + self._every_s
        height, width = self._teacher.input_size
        teacher = self._teacher.label(frame.rgb(width, height)[None])[0]
        self.subset.observe(teacher)
        self.latest = miou(labels, teacher, self.subset.classes)
        self.history.append((frame.timestamp, version, self.latest))


def run_demo(
    video: Path,
    *,
    duration_s: float = 120.0,
    report_every_s: float = 5.0,
    emit: Callable[[str], None] = print,
) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory(prefix="amstream-demo-") as tmp,
        LocalBroker(Path(tmp) / "broker") as broker,
    ):
        workdir = Path(tmp)
        config = demo_trainer_config(broker, workdir)
        emit(
            f"demo: broker on 127.0.0.1:{broker.port}; trainer: student "
            f"{config.student.model.name}, teacher {config.teacher.model.name}, "
            f"training {DEMO_TRAINING}; device: cpu profile on {video.name}"
        )
        daemon = TrainerDaemon(config)
        daemon.start()
        probe = AgreementProbe(load_teacher(config.teacher), every_s=2.0)
        profile = local_profile(
            broker.port, workdir / "device", video=video, telemetry={"results_rate_hz": 0.0}
        )
        runtime = EdgeRuntime.from_profile(profile, sinks=[probe])
        install_signal_handlers(runtime)
        runtime.start()
        reporter = _Reporter(runtime, daemon, probe, report_every_s, emit)
        reporter.start()
        try:
            with open_source(str(video), realtime=True, loop=True) as frames:
                summary = runtime.run(_for(frames, duration_s))
        finally:
            reporter.stop()
            runtime.shutdown(drain_s=5)
            daemon.stop()
        return _summary(summary.frames, summary.fps, runtime, daemon, probe)


def _for(frames: Iterable[Frame], seconds: float) -> Iterator[Frame]:
    """The frames of the next ``seconds`` of wall time."""
    deadline = time.monotonic() + seconds
    for frame in frames:
        if time.monotonic() > deadline:
            return
        yield frame


class _Reporter(threading.Thread):
    def __init__(
        self,
        runtime: EdgeRuntime,
        daemon: TrainerDaemon,
        probe: AgreementProbe,
        every_s: float,
        emit: Callable[[str], None],
    ) -> None:
        super().__init__(name="demo-report", daemon=True)
        self._runtime, self._daemon, self._probe = runtime, daemon, probe
        self._every_s, self._emit = every_s, emit
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join(2)

    def run(self) -> None:
        while not self._done.wait(self._every_s):
            runtime = self._runtime
            session = next(iter(self._daemon.sessions.values()), None)
            agreement = "n/a" if self._probe.latest is None else f"{self._probe.latest:.3f}"
            phases = session.stats.phases if session else 0
            self._emit(
                f"device: {runtime.stats.frames} frames, {runtime.stats.latency_ms(50)[0]:.0f} ms "
                f"p50, model v{runtime.model.version}, {runtime.counters.get('slots.swaps')} "
                f"swaps, sampling {runtime.sampler.rate_fps:.2f} fps | trainer: {phases} phases "
                f"| agreement with the teacher {agreement}"
            )


def _summary(
    frames: int, fps: float, runtime: EdgeRuntime, daemon: TrainerDaemon, probe: AgreementProbe
) -> dict[str, object]:
    session = next(iter(daemon.sessions.values()), None)
    history = probe.history
    first = [m for _, v, m in history if v is None]
    last = [m for _, v, m in history[-5:] if v is not None]
    return {
        "frames": frames,
        "fps": round(fps, 2),
        "swaps": runtime.counters.get("slots.swaps"),
        "model_version": runtime.model.version,
        "trainer": session.metrics() if session else None,
        "agreement_before_updates": round(float(np.mean(first)), 3) if first else None,
        "agreement_recent": round(float(np.mean(last)), 3) if last else None,
    }


def print_summary(summary: dict[str, object], emit: Callable[[str], None] = print) -> None:
    emit("demo summary: " + json.dumps(summary, default=str))
