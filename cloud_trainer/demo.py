"""``cloud-trainer demo``: the whole loop on one machine, on a real video.

A local mosquitto, the trainer daemon and one edge runtime (the ``cpu`` profile) playing the
video in real time. Every few seconds a line shows what the device runs and how far its labels
agree with the teacher's (mIoU over the stream's classes, on the frame just processed), beside
the pretrained student's on the same frame, as updates arrive. Training uses lighter settings
than the default (smaller crops and K), so that one CPU keeps up with one device; they are
printed at the start.
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
from edge_runtime.backends.base import Engine
from edge_runtime.backends.litert import LiteRtConfig
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
    against the teacher's, beside the pretrained student's on the same frame: frames differ
    far more than models do, so only the difference on one frame says what the updates did.
    (A second teacher instance and engine: engines are not shared across threads.)"""

    def __init__(self, teacher: Teacher, pretrained: Engine, every_s: float) -> None:
        self._teacher = teacher
        self._pretrained = pretrained
        self._every_s = every_s
        self._next = 0.0
        self.subset = ClassSubset(21)
        self.latest: tuple[float, float] | None = None  # (device, pretrained) mIoU
        self.history: list[tuple[float, int | None, float, float]] = []

    def __call__(self, frame: Frame, labels: np.ndarray, version: int | None) -> None:
        if frame.timestamp < self._next:
            return
        self._next = frame.timestamp + self._every_s
        height, width = self._teacher.input_size
        rgb = frame.rgb(width, height)
        teacher = self._teacher.label(rgb[None])[0]
        self.subset.observe(teacher)
        pretrained = self._pretrained.infer(rgb)
        self.latest = (
            miou(labels, teacher, self.subset.classes),
            miou(pretrained, teacher, self.subset.classes),
        )
        self.history.append((frame.timestamp, version, *self.latest))


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
        pretrained = LiteRtConfig(input_size=(513, 513)).open(config.student.model.read_bytes())
        probe = AgreementProbe(load_teacher(config.teacher), pretrained, every_s=2.0)
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
            latest = self._probe.latest
            agreement = "n/a" if latest is None else f"{latest[0]:.3f} (pretrained {latest[1]:.3f})"
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
    updated = [(device, pretrained) for _, v, device, pretrained in probe.history if v]
    return {
        "frames": frames,
        "fps": round(fps, 2),
        "swaps": runtime.counters.get("slots.swaps"),
        "model_version": runtime.model.version,
        "trainer": session.metrics() if session else None,
        "probed_frames": len(probe.history),
        # over the probed frames since the first update: the device's model and the pretrained
        # student, each scored against the teacher on the same frames
        "agreement_updated": _mean([d for d, _ in updated]),
        "agreement_pretrained": _mean([p for _, p in updated]),
    }


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def print_summary(summary: dict[str, object], emit: Callable[[str], None] = print) -> None:
    emit("demo summary: " + json.dumps(summary, default=str))
