"""A training step alone, at the trainer's settings, against the same run's plain forward pass.

Part of ``cloud-trainer bench-serve`` (issue 19): a phase of K steps runs through
``train_phase`` on real frames of the video labelled by the configured teacher, with no device
and no broker beside it, so the step's time is the trainer's own. In the same run and on the
same batches: the student's plain forward pass (inference mode, the int8 emulation on), and the
same phase with the emulation off (the network in plain float: what the int8 grids cost).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cloud_trainer.ams.training import new_optimizer, train_phase
from cloud_trainer.config import TrainerConfig
from cloud_trainer.sample_buffer import SampleBuffer, labelled_samples
from cloud_trainer.student import student_from
from cloud_trainer.teacher import load_teacher
from edge_runtime.bench import load_frames


def labelled_buffer(config: TrainerConfig, video: Path, frames: int) -> SampleBuffer:
    """The video's first ``frames`` frames, labelled by the teacher, as a session keeps them."""
    teacher = load_teacher(config.teacher)
    height, width = teacher.input_size
    decoded = load_frames(str(video), frames)
    labels = teacher.label(np.stack([f.rgb(width, height) for f in decoded]))
    buffer = SampleBuffer(config.training.horizon_s)
    for sample in labelled_samples(decoded, labels, config.training.frame_size):
        buffer.add(sample)
    return buffer


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # untimed: the first call allocates
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_step(config: TrainerConfig, video: Path, *, frames: int = 8) -> dict[str, object]:
    """Seconds per training step at ``config``'s settings (a phase of K steps), its stages,
    and the baselines."""
    training = config.training
    steps = training.iterations
    buffer = labelled_buffer(config, video, frames)
    graph = config.student.model.read_bytes()
    student = student_from(graph, graph).to(training.device)
    classes = tuple(range(student.num_classes))

    def phase(fake_quant: bool) -> dict[str, float]:
        student.fake_quant = fake_quant
        optimizer = new_optimizer(student, training)
        rng = np.random.default_rng(training.seed)
        train_phase(student, optimizer, buffer, classes, training, rng)  # untimed warm-up
        result = train_phase(student, optimizer, buffer, classes, training, rng)
        return {k.removeprefix("phase."): v / steps for k, v in result.stages.items()
                if k != "select"}  # fmt: skip

    step = phase(fake_quant=True)
    float_step = phase(fake_quant=False)
    student.fake_quant = True
    rgb = buffer.batch(training.batch_size, np.random.default_rng(0), training.resolution).rgb
    x = torch.from_numpy(rgb).to(training.device)

    @torch.inference_mode()
    def forward() -> None:
        student(x)
        if training.device.startswith("cuda"):
            torch.cuda.synchronize()

    forward_s = _median_seconds(forward, repeats=5)
    step_s, float_s = sum(step.values()), sum(float_step.values())
    return {
        "steps": steps,
        "threads": torch.get_num_threads(),
        "step_seconds": round(step_s, 4),
        "step_stage_seconds": {k: round(v, 4) for k, v in step.items()},
        "forward_seconds": round(forward_s, 4),  # the baseline: inference mode, int8 emulated
        "step_over_forward": round(step_s / forward_s, 3),
        "float_step_seconds": round(float_s, 4),  # the same network in plain float
        "step_over_float_step": round(step_s / float_s, 3),
    }
