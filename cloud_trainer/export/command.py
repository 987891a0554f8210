"""``cloud-trainer export``: a torch student to ONNX, TFLite (float16, int8) or the Edge TPU.

    cloud-trainer export --student builtin|CHECKPOINT
                         --format {tflite-fp16,tflite-int8,edgetpu,onnx}
                         --calibration VIDEO_OR_DIR --out DIR [--json]

``builtin`` is the project's own student (`cloud_trainer.student.torch_student`, freshly
initialised at --width and --input-size); CHECKPOINT a file written by its `save_checkpoint`.
The command exits 0 when the export meets its pixel-agreement target, 1 when it is written but
falls short, 2 when it cannot be made (missing onnx2tf environment, no frames, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_trainer.export.formats import ExportFormat

if TYPE_CHECKING:  # the pipeline loads torch: only when the command runs
    from cloud_trainer.export.pipeline import ExportResult

BUILTIN = "builtin"


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export`` on a command's subparsers."""
    parser = subparsers.add_parser(
        "export",
        help="export a torch student to ONNX, float16/int8 TFLite or the Edge TPU, verified",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--student", required=True, help=f"'{BUILTIN}' or a checkpoint from save_checkpoint"
    )
    parser.add_argument(
        "--format", required=True, choices=[f.value for f in ExportFormat], dest="fmt"
    )
    parser.add_argument(
        "--calibration",
        required=True,
        type=Path,
        help="a video or a directory of images: frames to calibrate int8 and to verify on",
    )
    parser.add_argument("--out", required=True, type=Path, help="directory for the export")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        help="input size of the export (default: the checkpoint's; builtin: the Coral dm05"
        " student's)",
    )
    parser.add_argument(
        "--width", type=float, default=0.5, help="builtin student: width multiplier (0.5)"
    )
    parser.add_argument(
        "--frames", type=int, default=64, help="frames read from --calibration (1 in 4 held out)"
    )
    parser.add_argument(
        "--quant",
        choices=["per-channel", "per-tensor"],
        help="int8 weight quantization (default: per-channel; per-tensor for edgetpu)",
    )
    parser.add_argument(
        "--io-dtype", choices=["uint8", "int8"], default="uint8", help="int8 exports' I/O dtype"
    )
    parser.set_defaults(func=export_command)
    return parser


def _summary(result: ExportResult) -> str:
    lines = [
        f"{result.format}: {result.path} ({result.size_bytes:,} bytes)",
        f"pixel agreement with the torch model: {result.pixel_agreement:.4f}"
        f" (target {result.target}, {'met' if result.meets_target else 'NOT met'};"
        f" {result.held_out_frames} held-out frames, worst {result.min_frame_agreement:.4f})",
        f"ONNX: {result.onnx_path}",
    ]
    if result.trainer_import is not None:
        lines.append(
            f"trainer import: {result.trainer_import.tensors} tensors at frozen scales,"
            f" fake-quant agreement with LiteRT {result.trainer_import.fake_quant_agreement:.4f}"
        )
    if result.edgetpu is not None:
        lines.append(f"edgetpu: {result.edgetpu.message}")
    lines.append(f"took {result.seconds:.1f} s")
    return "\n".join(lines)


def export_command(args: argparse.Namespace) -> int:
    from cloud_trainer.export.calibration import CalibrationError
    from cloud_trainer.export.onnx_export import OnnxExportError
    from cloud_trainer.export.pipeline import ExportOptions, export_student
    from cloud_trainer.export.tflite_convert import ConversionError, Onnx2TfUnavailable
    from cloud_trainer.student.torch_student import (
        DeepLabV3MobileNetV2,
        StudentConfig,
        load_checkpoint,
    )

    size = tuple(args.input_size) if args.input_size else None
    if args.student == BUILTIN:
        chosen = {"width": args.width} | ({"input_size": size} if size else {})
        model = DeepLabV3MobileNetV2(StudentConfig(**chosen))
    else:
        try:
            model = load_checkpoint(args.student)
        except (OSError, KeyError, RuntimeError, ValueError) as exc:
            print(f"error: cannot load the checkpoint {args.student}: {exc}", file=sys.stderr)
            return 2
    options = ExportOptions(
        format=args.fmt,
        out_dir=args.out,
        input_size=size or model.config.input_size,
        frames=args.frames,
        quant_type=args.quant,
        io_dtype=args.io_dtype,
    )
    try:
        result = export_student(model, args.calibration, options)
    except (Onnx2TfUnavailable, CalibrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConversionError, OnnxExportError) as exc:
        print(f"error: the export failed: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(_summary(result))
    return 0 if result.meets_target else 1
