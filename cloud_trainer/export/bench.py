"""Benchmark the export pipeline: the builtin student, distilled from the teacher on a video,
exported to every format; pixel agreement, file size and time per format.

    python -m cloud_trainer.export.bench [--video V] [--width 0.35] [--size 257] [--steps 120]

Writes export-<time>.json under ./benchmarks/results (or --results-dir; see
`shared_schema.bench_results`) and prints it.
The student trains at the export size on teacher labels first: an untrained one labels every
pixel background, and agreement on that says nothing about the export.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cloud_trainer.export.calibration import load_frames
from cloud_trainer.export.formats import ExportFormat
from cloud_trainer.export.pipeline import ExportOptions, export_student
from cloud_trainer.export.tflite_convert import Onnx2TfUnavailable, find_onnx2tf
from cloud_trainer.student.torch_student import (
    DeepLabV3MobileNetV2,
    StudentConfig,
    distill,
    predict_labels,
)
from cloud_trainer.teacher import TeacherConfig, load_teacher
from shared_schema.bench_results import add_results_dir_option, write_result
from shared_schema.config_files import find_shared_dir

TEACHER = "models/coral/deeplabv3_mnv2_pascal_quant.tflite"
VIDEO = "videos/vtest.avi"


def teacher_labels(teacher: Path, video: Path, size: tuple[int, int], count: int) -> np.ndarray:
    """The (LiteRT) teacher's labels for `count` frames of the video, at `size` (nearest label:
    with aligned corners and sizes 16k + 1 these are the teacher's own pixels)."""
    labeller = load_teacher(TeacherConfig(model=teacher))
    height, width = labeller.input_size
    labels = labeller.label(load_frames(video, (height, width), count))
    rows = np.linspace(0, height - 1, size[0]).round().astype(int)
    cols = np.linspace(0, width - 1, size[1]).round().astype(int)
    return labels[:, rows][:, :, cols]


def run(
    video: Path, teacher: Path, width: float, size: tuple[int, int], steps: int, frames: int
) -> dict[str, object]:
    torch.manual_seed(0)
    model = DeepLabV3MobileNetV2(StudentConfig(width=width, input_size=size))
    start = time.perf_counter()
    train_frames = load_frames(video, size, 32)
    labels = teacher_labels(teacher, video, size, 32)
    losses = distill(model, train_frames, labels, steps, batch_size=4, lr=3e-3)
    reference = predict_labels(model, train_frames)
    student = {
        "architecture": "DeepLabV3 (mobile ASPP) on MobileNetV2, output stride 16",
        "width": width,
        "input_size": list(size),
        "parameters": model.parameter_count,
        "distill_steps": steps,
        "loss_first": float(np.mean(losses[:5])),
        "loss_last": float(np.mean(losses[-5:])),
        "teacher_agreement": float((reference == labels).mean()),
        "person_pixel_fraction": float((reference == 15).mean()),
        "distill_seconds": time.perf_counter() - start,
    }
    formats = list(ExportFormat)
    try:
        find_onnx2tf()
    except Onnx2TfUnavailable as exc:
        print(f"warning: {exc}; benchmarking the ONNX export only")
        formats = [ExportFormat.ONNX]
    exports = {}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as out:
        for fmt in formats:
            options = ExportOptions(
                format=fmt, out_dir=Path(out) / fmt.value, input_size=size, frames=frames
            )
            result = export_student(model, video, options)
            exports[fmt.value] = result.model_dump(
                mode="json",
                include={
                    "pixel_agreement",
                    "min_frame_agreement",
                    "target",
                    "meets_target",
                    "size_bytes",
                    "seconds",
                    "held_out_frames",
                    "calibration_frames",
                    "edgetpu",
                    "trainer_import",
                },
            )
            print(f"{fmt}: {json.dumps(exports[fmt.value])}", flush=True)
    return {"video": str(video), "student": student, "exports": exports}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, help=f"default: the shared {VIDEO}")
    parser.add_argument("--teacher", type=Path, help=f"default: the shared {TEACHER}")
    parser.add_argument("--width", type=float, default=0.35)
    parser.add_argument("--size", type=int, default=257, help="square input size, 16k + 1")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--frames", type=int, default=64, help="calibration + held-out frames")
    add_results_dir_option(parser)
    args = parser.parse_args(argv)
    shared = find_shared_dir()
    if (args.video is None or args.teacher is None) and shared is None:
        parser.error("no shared data directory: give --video and --teacher")
    video = args.video or shared / VIDEO
    teacher = args.teacher or shared / TEACHER
    results = run(video, teacher, args.width, (args.size, args.size), args.steps, args.frames)
    path = write_result("export", results, args.results_dir)
    print(json.dumps(results, indent=2))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
