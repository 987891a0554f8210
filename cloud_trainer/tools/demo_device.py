"""One demo device, in its own process as on real hardware: the edge runtime with the ``cpu``
profile pointed at the demo's broker, playing a video in real time, and a probe that scores its
labels against the teacher's every few seconds, beside the pretrained student's on the same
frame (frames differ far more than models do: only the difference on one frame says what the
updates did). About once a second it writes its state to a JSON file, which the demo's live
view and report read; the last write comes after the runtime has shut down."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloud_trainer.evaluation.config import Geometry
from cloud_trainer.teacher import Teacher, TeacherConfig, load_teacher
from cloud_trainer.tools.emulation import local_profile
from edge_runtime.backends.base import Engine
from edge_runtime.backends.litert import LiteRtConfig
from edge_runtime.durable import atomic_write
from edge_runtime.frames import Frame
from edge_runtime.runtime import EdgeRuntime, install_signal_handlers
from edge_runtime.sources import open_source
from shared_schema.metrics import ClassSubset, miou

_NOT_YET = object()  # no frame labelled yet: the model the device boots with is no update


@dataclass(frozen=True)
class DeviceSpec:
    device_id: str
    video: str
    mqtt: dict[str, object]  # the profile's [mqtt] table: the broker and this device's login
    workdir: str
    status_path: str
    duration_s: float
    teacher_model: str
    student_model: str
    keys: dict[str, str] = field(default_factory=dict)  # [model] public_key, next_public_key
    threads: int = 1  # LiteRT threads: several devices share this machine's cores
    probe_every_s: float = 2.0


class AgreementProbe:
    """A result sink: every ``every_s`` seconds, the device's labels and the pretrained
    student's, each scored (mIoU over the stream's classes) against the teacher's."""

    def __init__(
        self, teacher: Teacher, pretrained: Engine, every_s: float, num_classes: int
    ) -> None:
        self._teacher, self._pretrained, self._every_s = teacher, pretrained, every_s
        self._started = time.monotonic()
        self._next = 0.0
        self._version: object = _NOT_YET  # the version of the model labelling frames
        self.subset = ClassSubset(num_classes)
        self.history: list[tuple[float, int | None, float, float]] = []  # t, version, both
        self.updates: list[float] = []  # when a new model first labelled a frame

    def __call__(self, frame: Frame, labels: np.ndarray, version: int | None) -> None:
        now = time.monotonic() - self._started
        if version != self._version:
            if self._version is not _NOT_YET:
                self.updates.append(now)
            self._version = version
        if now < self._next:
            return
        self._next = now + self._every_s
        height, width = self._teacher.input_size
        rgb = frame.rgb(width, height)
        teacher = self._teacher.label(rgb[None])[0]
        self.subset.observe(teacher)
        device = miou(labels, teacher, self.subset.classes)
        pretrained = miou(self._pretrained.infer(rgb), teacher, self.subset.classes)
        self.history.append((round(now, 2), version, device, pretrained))


def device_status(
    spec: DeviceSpec, runtime: EdgeRuntime, probe: AgreementProbe, done: bool
) -> dict[str, object]:
    elapsed = max(runtime.stats.uptime_s(), 1e-9)
    counters = runtime.counters
    return {
        "device_id": spec.device_id,
        "video": Path(spec.video).name,
        "elapsed_s": round(elapsed, 2),
        "frames": runtime.stats.frames,
        "fps": runtime.stats.frames / elapsed,
        "sampling_fps": runtime.sampler.rate_fps,
        "model_version": runtime.model.version,
        "updates_applied": counters.get("slots.swaps"),
        "uplink_kbps": counters.get("bytes_out") * 8 / elapsed / 1000,
        "downlink_kbps": counters.get("bytes_in") * 8 / elapsed / 1000,
        "history": list(probe.history),
        "updates": list(probe.updates),
        "done": done,
    }


def run_device(spec: DeviceSpec) -> None:
    """The process's body (the target of ``multiprocessing``)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    workdir = Path(spec.workdir)
    profile = local_profile(
        spec.mqtt,
        workdir,
        device_id=spec.device_id,
        video=Path(spec.video),
        inference={"threads": spec.threads},
        telemetry={"results_rate_hz": 0.0},
        model=spec.keys,
    )
    # The probe labels one frame with all three models: they must share the student's geometry.
    geometry = Geometry.of(Path(spec.student_model), Path(spec.teacher_model))
    teacher = load_teacher(TeacherConfig(model=Path(spec.teacher_model), threads=1))
    pretrained = LiteRtConfig(threads=1).open(Path(spec.student_model).read_bytes())
    probe = AgreementProbe(teacher, pretrained, spec.probe_every_s, geometry.num_classes)
    runtime = EdgeRuntime.from_profile(profile, sinks=[probe])
    install_signal_handlers(runtime)
    runtime.start()
    writer = _StatusWriter(spec, runtime, probe)
    writer.start()
    try:
        with open_source(spec.video, realtime=True, loop=True) as frames:
            runtime.run(_for_seconds(frames, spec.duration_s))
    finally:
        runtime.shutdown(drain_s=5)
        writer.finish()


def _for_seconds(frames: Iterable[Frame], seconds: float) -> Iterator[Frame]:
    """The frames of the next ``seconds`` of wall time."""
    deadline = time.monotonic() + seconds
    for frame in frames:
        if time.monotonic() > deadline:
            return
        yield frame


class _StatusWriter(threading.Thread):
    def __init__(self, spec: DeviceSpec, runtime: EdgeRuntime, probe: AgreementProbe) -> None:
        super().__init__(name="demo-status", daemon=True)
        self._spec, self._runtime, self._probe = spec, runtime, probe
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(1.0):
            self._write(done=False)

    def finish(self) -> None:
        self._done.set()
        self.join(5)
        self._write(done=True)

    def _write(self, done: bool) -> None:
        status = device_status(self._spec, self._runtime, self._probe, done)
        atomic_write(Path(self._spec.status_path), json.dumps(status).encode())
