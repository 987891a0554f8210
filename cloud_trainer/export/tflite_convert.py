"""ONNX → TFLite through onnx2tf, run in its own environment by subprocess.

onnx2tf pins exact versions of tensorflow, numpy, onnx and onnxruntime that conflict with the
trainer's, so it lives in an isolated virtualenv (`scripts/export_env.sh` creates
`.export-venv/`; `$AMS_EXPORT_VENV` points elsewhere) and only its command line is used.

`to_float16` converts the ONNX file to float16 TFLite (float32 I/O, float16 weights); `to_int8`
to full-integer TFLite: int8 weights (per-channel or per-tensor) and activations, uint8 or int8
input and output tensors, calibrated on real frames normalized exactly as the device normalizes
them, (pixel - mean) / std. onnx2tf turns the NCHW ONNX graph
into NHWC, so the TFLite input is (1, H, W, 3), what the LiteRT back-end feeds.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cloud_trainer.export.onnx_export import INPUT_NAME

EXPORT_VENV_ENV = "AMS_EXPORT_VENV"
DEFAULT_VENV = Path(__file__).resolve().parents[2] / ".export-venv"
SETUP_HINT = "run scripts/export_env.sh (it creates .export-venv/), or set AMS_EXPORT_VENV"
# onnx2tf reads this file from its working directory for its own sample inference, and would
# download MS-COCO images when it is absent; our calibration frames stand in for them.
_ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
_LOG_TAIL = 4000
TIMEOUT_S = 1800.0  # generous: the 513x513 width-0.5 student takes ~2 min on two cores

QuantType = Literal["per-channel", "per-tensor"]
IoDtype = Literal["uint8", "int8"]


class Onnx2TfUnavailable(RuntimeError):
    """The isolated onnx2tf environment is not installed."""


class ConversionError(RuntimeError):
    """onnx2tf ran and failed, or did not write the expected model."""


@dataclass(frozen=True)
class IntegerOptions:
    """Full-integer post-training quantization, calibrated on `frames`."""

    frames: np.ndarray  # (n, H, W, 3) uint8 RGB at the model's input size
    mean: float = 128.0  # the normalization the device applies: (pixel - mean) / std
    std: float = 128.0
    quant_type: QuantType = "per-channel"
    io_dtype: IoDtype = "uint8"


def find_onnx2tf() -> Path:
    """The onnx2tf executable of the export environment, or Onnx2TfUnavailable saying how to
    install it."""
    venv = Path(os.environ.get(EXPORT_VENV_ENV) or DEFAULT_VENV)
    executable = venv / "bin" / "onnx2tf"
    if executable.is_file() and os.access(executable, os.X_OK):
        return executable
    raise Onnx2TfUnavailable(f"onnx2tf is not installed at {executable}: {SETUP_HINT}")


def to_float16(onnx_path: str | os.PathLike[str], work_dir: str | os.PathLike[str]) -> Path:
    """The float16 TFLite model (float32 input and output) of the ONNX file."""
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # onnx2tf's own sample inference wants images in [0, 1]; any will do without calibration.
    np.save(work / _ONNX2TF_SAMPLE_FILE, np.full((1, 8, 8, 3), 0.5, np.float32))
    return _run(onnx_path, work, [], "float16")


def to_int8(
    onnx_path: str | os.PathLike[str], work_dir: str | os.PathLike[str], integer: IntegerOptions
) -> Path:
    """The full-integer TFLite model of the ONNX file, calibrated on `integer.frames`."""
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    calibration = work / "calibration.npy"
    # Raw pixels, normalized by onnx2tf with the device's mean and std: no rounding on the way.
    np.save(calibration, integer.frames.astype(np.float32))
    np.save(work / _ONNX2TF_SAMPLE_FILE, integer.frames.astype(np.float32) / 255.0)
    mean, std = ([[[[v] * 3]]] for v in (integer.mean, integer.std))  # NHWC, per channel
    args = ["-oiqt", "-qt", integer.quant_type, "-iqd", integer.io_dtype, "-oqd", integer.io_dtype]
    args += ["-cind", INPUT_NAME, str(calibration), str(mean), str(std)]
    return _run(onnx_path, work, args, "full_integer_quant")


def _run(onnx_path: str | os.PathLike[str], work: Path, args: list[str], suffix: str) -> Path:
    """Run onnx2tf in `work` and return the model it wrote as <stem>_<suffix>.tflite."""
    executable = find_onnx2tf()
    onnx_path = Path(onnx_path).resolve()
    out = work / "onnx2tf"
    command = [str(executable), "-i", str(onnx_path), "-o", str(out), "-v", "error", *args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    try:
        run = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"onnx2tf did not finish within {TIMEOUT_S:.0f} s") from exc
    model = out / f"{onnx_path.stem}_{suffix}.tflite"
    if run.returncode != 0 or not model.is_file():
        log = run.stdout + run.stderr
        raise ConversionError(
            f"onnx2tf failed (exit {run.returncode}, {model.name} written: {model.is_file()}):\n"
            + log[-_LOG_TAIL:]
        )
    return model
