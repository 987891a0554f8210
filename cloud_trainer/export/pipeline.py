"""One export: torch student → ONNX → (onnx2tf) TFLite → (edgetpu_compiler), verified.

Every export goes through ONNX (`onnx_export`), which is itself the Jetson format; TFLite
formats come from onnx2tf (`tflite_convert`), int8 ones calibrated on real frames
(`calibration`). The result runs through the device's own back-end on frames held out of the
calibration and is compared with the torch model (`verify`). An int8 export is also imported
back as a trainable torch student (`cloud_trainer.student.import_tflite`), whose fake-quant
forward must reproduce LiteRT on it: that import, with the scales the export froze, is what the
trainer keeps training and ships `qdelta` updates against.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from cloud_trainer.export.calibration import load_frames, split
from cloud_trainer.export.edgetpu import compile_model
from cloud_trainer.export.formats import TARGETS, ExportFormat
from cloud_trainer.export.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx
from cloud_trainer.export.tflite_convert import (
    IntegerOptions,
    IoDtype,
    QuantType,
    to_float16,
    to_int8,
)
from cloud_trainer.export.verify import agreement, device_labels
from cloud_trainer.student import import_tflite
from cloud_trainer.student.torch_student import PIXEL_MEAN, PIXEL_STD, predict_labels
from shared_schema.envelope import sha256_hex
from shared_schema.messages import ModelFormat

MANIFEST = "export.json"


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: ExportFormat
    out_dir: Path
    input_size: tuple[int, int]  # (height, width) of the exported model
    frames: int = Field(64, ge=2)  # frames read from the calibration source
    held_out_every: int = Field(4, ge=2)  # 1 in this many verifies instead of calibrating
    mean: float = PIXEL_MEAN  # the model's input is (pixel - mean) / std
    std: float = Field(PIXEL_STD, gt=0)
    # int8: per-channel weights by default; the Edge TPU gets per-tensor, the scheme its
    # compiler was built around (Coral's own models are per-tensor).
    quant_type: QuantType | None = None
    io_dtype: IoDtype = "uint8"  # int8 exports: the dtype of the input and output tensors
    name: str = Field("student", pattern=r"^[A-Za-z0-9_.-]+$")

    def resolved_quant_type(self) -> QuantType:
        if self.quant_type is not None:
            return self.quant_type
        return "per-tensor" if self.format == ExportFormat.EDGETPU else "per-channel"


class TrainerImport(BaseModel):
    """The int8 export imported back as the trainer's student, with its frozen scales."""

    tensors: int  # weight and bias tensors a qdelta can patch
    parameters: int
    fake_quant_agreement: float  # labels of the import (fake-quant) against LiteRT's


class EdgeTpuSummary(BaseModel):
    compiled: bool
    ops_on_tpu: int | None
    ops_on_cpu: int | None
    message: str


class ExportResult(BaseModel):
    format: ExportFormat
    model_format: ModelFormat  # what a device's `Model` message announces
    path: Path
    size_bytes: int
    sha256: str
    onnx_path: Path
    input: dict[str, object]  # layout, dtype and normalization the model expects
    pixel_agreement: float
    min_frame_agreement: float
    target: float
    meets_target: bool
    verified_on: Path  # the file the agreement was measured on (the int8 one for the Edge TPU)
    held_out_frames: int
    calibration_frames: int
    seconds: float
    edgetpu: EdgeTpuSummary | None = None
    trainer_import: TrainerImport | None = None


def _model_format(fmt: ExportFormat, edgetpu: EdgeTpuSummary | None) -> ModelFormat:
    if fmt == ExportFormat.ONNX:
        return ModelFormat.ONNX
    return ModelFormat.EDGETPU_TFLITE if edgetpu and edgetpu.compiled else ModelFormat.TFLITE


def _input_contract(options: ExportOptions) -> dict[str, object]:
    """What the exported model's input and output tensors are, for the device profile."""
    height, width = options.input_size
    if options.format == ExportFormat.ONNX:
        shapes = {"layout": "NCHW", "input": [1, 3, height, width], "dtype": "float32"}
        names = {"input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "opset": OPSET}
    else:
        dtype = "float32" if options.format == ExportFormat.TFLITE_FP16 else options.io_dtype
        shapes = {"layout": "NHWC", "input": [1, height, width, 3], "dtype": dtype}
        names = {}
    return {
        **shapes,
        **names,
        "normalization": f"(pixel - {options.mean}) / {options.std}",
        "output": "class scores, same layout, at the input resolution",
    }


def _trainer_import(model: Path, frames: np.ndarray, litert_labels: np.ndarray) -> TrainerImport:
    student = import_tflite(model).eval()
    with torch.no_grad():
        labels = np.concatenate(
            [
                student.labels(torch.from_numpy(frames[i : i + 4])).numpy()
                for i in range(0, len(frames), 4)
            ]
        )
    return TrainerImport(
        tensors=sum(1 for _ in student.constants()),
        parameters=student.parameter_count,
        fake_quant_agreement=agreement(labels, litert_labels).pixel_agreement,
    )


def export_student(
    model: nn.Module,
    calibration: str | os.PathLike[str] | Sequence[np.ndarray],
    options: ExportOptions,
) -> ExportResult:
    """Export `model` (NCHW float input normalized as options say → NCHW scores) to
    `options.format` under `options.out_dir`, verify it and write the manifest (export.json)."""
    start = time.perf_counter()
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    size = options.input_size
    parts = split(load_frames(calibration, size, options.frames), options.held_out_every)
    reference = predict_labels(model, parts.held_out, mean=options.mean, std=options.std)
    onnx_path = export_onnx(model, out / f"{options.name}.onnx", size)

    edgetpu = trainer = None
    with tempfile.TemporaryDirectory(prefix="onnx2tf-") as work:
        if options.format == ExportFormat.ONNX:
            artifact = verified = onnx_path
        elif options.format == ExportFormat.TFLITE_FP16:
            artifact = verified = out / f"{options.name}_float16.tflite"
            shutil.copyfile(to_float16(onnx_path, work), artifact)
        else:
            integer = IntegerOptions(
                parts.calibration,
                options.mean,
                options.std,
                options.resolved_quant_type(),
                options.io_dtype,
            )
            artifact = verified = out / f"{options.name}_int8.tflite"
            shutil.copyfile(to_int8(onnx_path, work, integer), artifact)
    labels = device_labels(
        verified.read_bytes(), parts.held_out, mean=options.mean, std=options.std
    )
    if options.format in (ExportFormat.TFLITE_INT8, ExportFormat.EDGETPU):
        trainer = _trainer_import(verified, parts.held_out, labels)
    if options.format == ExportFormat.EDGETPU:
        compiled = compile_model(verified, out)
        artifact = compiled.model
        edgetpu = EdgeTpuSummary(
            compiled=compiled.compiled,
            ops_on_tpu=compiled.operations.on_tpu if compiled.operations else None,
            ops_on_cpu=compiled.operations.on_cpu if compiled.operations else None,
            message=compiled.message,
        )
    measured = agreement(labels, reference)
    target = TARGETS[options.format]
    result = ExportResult(
        format=options.format,
        model_format=_model_format(options.format, edgetpu),
        path=artifact,
        size_bytes=artifact.stat().st_size,
        sha256=sha256_hex(artifact.read_bytes()),
        onnx_path=onnx_path,
        input=_input_contract(options),
        pixel_agreement=measured.pixel_agreement,
        min_frame_agreement=measured.min_frame_agreement,
        target=target,
        meets_target=measured.pixel_agreement >= target,
        verified_on=verified,
        held_out_frames=len(parts.held_out),
        calibration_frames=len(parts.calibration),
        seconds=time.perf_counter() - start,
        edgetpu=edgetpu,
        trainer_import=trainer,
    )
    (out / MANIFEST).write_text(result.model_dump_json(indent=2) + "\n")
    return result
