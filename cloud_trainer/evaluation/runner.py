"""Drives an evaluation: the stream's class subset (a pass that labels every scored frame with
the teacher and the pretrained student, filling the caches), then each scheme over the same
frames, frame by frame on the virtual clock, with progress bars (virtual time, scheme, ETA).

Files under the output directory: ``runs/stream.json`` (the stream, its subset), and per scheme
``runs/<scheme>.{npz,json}``; the ablation's runs go to ``ablation/``.
"""

from __future__ import annotations

import datetime
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cloud_trainer.ams.coordinate_descent import Selection
from cloud_trainer.evaluation.cache import CachedTeacher, LabelCache
from cloud_trainer.evaluation.config import EvalConfig, Geometry, Variant
from cloud_trainer.evaluation.record import SchemeRun
from cloud_trainer.evaluation.schemes import Context, Scheme
from cloud_trainer.evaluation.schemes.session_driven import ams
from cloud_trainer.evaluation.scoring import iou_counts
from cloud_trainer.evaluation.stream import ReplayStream, rotation
from cloud_trainer.teacher import Teacher, TeacherConfig, load_teacher
from edge_runtime.backends.litert import LiteRtConfig
from shared_schema.metrics import ClassSubset

RUNS = "runs"
ABLATION = "ablation"
VARIANTS = "variants"
STREAM_INFO = "stream.json"
# Seed 002 Table 3: the strategies and fractions swept, against training every parameter.
ABLATION_STRATEGIES = (Selection.GRADIENT, Selection.RANDOM, Selection.FIRST, Selection.LAST)
ABLATION_GAMMAS = (0.20, 0.10, 0.05, 0.01)
FULL_MODEL = "full"

SchemeFactory = Callable[[Context], Scheme]


@dataclass(frozen=True)
class StreamInfo:
    signature: dict[str, object]
    classes: tuple[int, ...]  # the scoring subset: > 0.5 % of teacher pixels, and background
    duration_s: float
    videos: list[str]
    size: tuple[int, int]  # (height, width) of the device model: frames and label maps

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path, size: tuple[int, int]) -> StreamInfo:
        """A saved stream's; ``size`` is the models' (files saved before it was kept)."""
        raw = json.loads(path.read_text())
        size = tuple(raw.get("size", size))  # type: ignore[assignment]
        return cls(raw["signature"], tuple(raw["classes"]), raw["duration_s"], raw["videos"], size)


def command_line() -> str:
    """How this evaluation was started, as a user types it."""
    return " ".join(["cloud-trainer", *sys.argv[1:]])


def ablation_name(selection: Selection, gamma: float) -> str:
    return f"{selection.value}_{round(gamma * 100)}"


class Evaluation:
    def __init__(self, config: EvalConfig, videos: list[Path], out: Path, cache_dir: Path) -> None:
        self.config = config
        self.out = out
        self.geometry = Geometry.of(config.student_model, config.teacher_model)
        self.initial = config.student_model.read_bytes()
        teacher_model = config.teacher_model.read_bytes()
        size = self.geometry.input_size
        settings = config.stream
        parts = [] if settings.rotation_s is None else rotation(videos, settings.rotation_s,
                                                                   settings.rounds)  # fmt: skip
        self.stream = ReplayStream(videos, size, settings.clip_s, settings.eval_stride, parts)
        self._teacher: Teacher = load_teacher(
            TeacherConfig(model=config.teacher_model, threads=config.threads)
        )
        self.teacher_labels = LabelCache(cache_dir, teacher_model, self._teacher.label)
        engine = LiteRtConfig(threads=config.threads).open(self.initial)
        self.pretrained_labels = LabelCache(
            cache_dir, self.initial, lambda rgb: np.stack([engine.infer(p) for p in rgb])
        )
        self.progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            TextColumn("t {task.completed:>6.1f} / {task.total:.1f} s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )

    def cached_teacher(self) -> CachedTeacher:
        """The teacher as a scheme's trainer sees it: labels from the cache, at its cost."""
        return CachedTeacher(self._teacher, self.teacher_labels)

    def stream_info(self) -> StreamInfo:
        """The stream's class subset, from the teacher's labels of every scored frame (read
        back when an earlier run over the same frames found it)."""
        path = self.out / RUNS / STREAM_INFO
        if path.is_file():
            size = self.geometry.input_size
            saved = StreamInfo.load(path, size)
            if (saved.signature, saved.size) == (self.stream.signature(), size):
                return saved
        subset = ClassSubset(self.geometry.num_classes)
        task = self.progress.add_task("labels", total=self.stream.duration_s)
        for frame in self.stream:
            if frame.evaluated:
                subset.observe(self.teacher_labels(frame.rgb[None])[0])
                self.pretrained_labels(frame.rgb[None])
            self.progress.update(task, completed=frame.t)
        self.progress.update(task, completed=self.stream.duration_s)
        info = StreamInfo(
            self.stream.signature(),
            subset.classes,
            self.stream.end_s,
            self.stream.names,
            self.geometry.input_size,
        )
        info.save(path)
        return info

    def run(
        self,
        name: str,
        factory: SchemeFactory,
        directory: Path,
        overrides: dict[str, object] | None = None,
    ) -> SchemeRun:
        """One scheme over the whole stream; saved under ``directory``."""
        run = SchemeRun(name, self.stream.signature())
        if overrides:
            run.extra["overrides"] = overrides
        classes = self.geometry.num_classes
        task = self.progress.add_task(name, total=self.stream.duration_s)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"eval-{name}-") as scratch:
            teacher = self.cached_teacher()
            ctx = Context(
                self.config,
                self.initial,
                teacher,
                self.pretrained_labels,
                run,
                Path(scratch),
                self.stream,
            )
            scheme = factory(ctx)
            try:
                for frame in self.stream:
                    scheme.step(frame)
                    if frame.evaluated:
                        target = self.teacher_labels(frame.rgb[None])[0]
                        counts = iou_counts(scheme.labels(frame), target, classes)
                        run.add_frame(frame.t, frame.video, counts)
                    self.progress.update(task, completed=frame.t)
            finally:
                scheme.close()
        self.progress.update(task, completed=self.stream.duration_s)
        run.wall_s = time.perf_counter() - started
        run.duration_s = self.stream.end_s
        run.command = command_line()
        run.finished = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        run.save(directory)
        return run

    def ablation(self) -> None:
        """Seed 002 Table 3: AMS with each selection strategy at each γ, and with every
        parameter trained (the reference the table's differences are taken against)."""
        settings = self.config.ams
        training = settings.training
        variants = {FULL_MODEL: training.model_copy(update={"gamma": 1.0})}
        for selection in ABLATION_STRATEGIES:
            for gamma in ABLATION_GAMMAS:
                update = {"gamma": gamma, "selection": selection}
                variants[ablation_name(selection, gamma)] = training.model_copy(update=update)
        for name, variant in variants.items():
            chosen = settings.model_copy(update={"training": variant})
            self.run(name, partial(ams, settings=chosen), self.out / ABLATION)

    def variant(self, variant: Variant) -> SchemeRun:
        """AMS with ``variant``'s settings, saved under ``variants/`` with its overrides."""
        factory = partial(ams, settings=variant.settings)
        return self.run(variant.name, factory, self.out / VARIANTS, variant.overrides)
