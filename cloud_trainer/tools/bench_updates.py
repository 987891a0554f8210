"""``cloud-trainer bench-updates``: the size of real updates in every format.

Real AMS training phases on the default student (teacher labels of the video sampled at
1 fps, one T_update of new frames per phase); after each phase the same change is encoded in
all three formats from the same base file, and the qdelta chain goes on. Also measured: the
label agreement, on held-out frames, between the TFLite file the device ends up running
(qdelta and ams-fp16 applied by the device's code) and the trainer's fake-quant model.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from cloud_trainer.ams.training import TrainingConfig, new_optimizer, train_phase
from cloud_trainer.mirror import ModelMirror
from cloud_trainer.sample_buffer import SampleBuffer, labelled_samples
from cloud_trainer.student import TFLiteStudent, import_tflite
from cloud_trainer.teacher import TeacherConfig, load_teacher
from edge_runtime.backends.litert import LiteRtConfig
from edge_runtime.frames import Frame
from edge_runtime.sources import open_source
from shared_schema.messages import UpdateFormat
from shared_schema.metrics import ClassSubset
from shared_schema.update_formats import apply_update


def sample_frames(video: str, rate_fps: float, until_s: float) -> list[Frame]:
    """Frames of ``video`` at ``rate_fps`` (by their timestamps) up to ``until_s``."""
    picked, next_t = [], 0.0
    with open_source(video) as frames:
        for frame in frames:
            if frame.timestamp >= until_s:
                break
            if frame.timestamp >= next_t:
                picked.append(frame)
                next_t += 1.0 / rate_fps
    return picked


def agreement(model_file: bytes, student: TFLiteStudent, frames: list[Frame]) -> float:
    """Share of pixels where the TFLite file and the fake-quant student give the same label."""
    height, width = student.input_size
    engine = LiteRtConfig(backend="litert", threads=2).open(model_file)
    with engine:
        same = [
            np.mean(engine.infer(rgb) == student.labels(rgb[None])[0].numpy())
            for rgb in (f.rgb(width, height) for f in frames)
        ]
    return float(np.mean(same))


def bench_updates(
    video: str,
    *,
    student_model: Path,
    teacher_model: Path,
    updates: int = 3,
    training: TrainingConfig | None = None,
    t_update_s: float = 10.0,
    held_out: int = 5,
) -> dict[str, object]:
    training = training or TrainingConfig()
    teacher = load_teacher(TeacherConfig(model=teacher_model))
    frames = sample_frames(video, 1.0, updates * t_update_s + held_out)
    if len(frames) < updates * t_update_s + 1:
        raise ValueError(f"{video} is too short for {updates} updates of {t_update_s} s")
    evaluation = frames[-held_out:]  # after every training frame: never trained on
    initial = student_model.read_bytes()
    student = import_tflite(initial).to(training.device)
    training = training.for_student(student.input_size)
    optimizer = new_optimizer(student, training)
    buffer, subset = SampleBuffer(training.horizon_s), ClassSubset(student.num_classes)
    mirror = ModelMirror(initial, device_id="bench")
    rng = np.random.default_rng(training.seed)
    sizes: dict[str, list[int]] = {fmt.value: [] for fmt in UpdateFormat}
    phases, qdelta_agree, ams_agree = [], [], []
    height, width = teacher.input_size
    for n in range(updates):
        window = [f for f in frames if n * t_update_s <= f.timestamp < (n + 1) * t_update_s]
        labels = teacher.label(np.stack([f.rgb(width, height) for f in window]))
        for sample in labelled_samples(window, labels, training.frame_size):
            subset.observe(sample.labels)
            buffer.add(sample)
        result = train_phase(student, optimizer, buffer, subset.seen, training, rng)
        phases.append(result.seconds)
        bodies = {f: mirror.body_for(student, f, optimizer.mask) for f in UpdateFormat}
        for fmt, body in bodies.items():
            sizes[fmt.value].append(len(body))
        ams_file = apply_update(UpdateFormat.AMS_FP16, mirror.data, bodies[UpdateFormat.AMS_FP16])
        ams_agree.append(agreement(ams_file, student, evaluation))
        mirror.advance(student, UpdateFormat.QDELTA)
        qdelta_agree.append(agreement(mirror.data, student, evaluation))
    mean = {fmt: statistics.mean(values) for fmt, values in sizes.items()}
    return {
        "video": video,
        "updates": updates,
        "gamma": training.gamma,
        "iterations": training.iterations,
        "batch_size": training.batch_size,
        "resolution": list(training.resolution),
        "bytes_per_update": sizes,
        "mean_bytes_per_update": mean,
        "qdelta_vs_ams_ratio": mean["qdelta"] / mean["ams-fp16"],
        "zpatch_vs_ams_ratio": mean["zpatch"] / mean["ams-fp16"],
        "qdelta_label_agreement": qdelta_agree,
        "qdelta_label_agreement_min": min(qdelta_agree),
        "ams_fp16_label_agreement": ams_agree,
        "training_seconds_per_phase": phases,
        "held_out_frames": len(evaluation),
    }
