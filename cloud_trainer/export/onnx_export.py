"""torch → ONNX: the first step of every export, and the model Jetson runs as it is.

The ONNX contract, which the onnxruntime back-end feeds and onnx2tf converts:

- input ``image``: (1, 3, H, W) float32, NCHW, the pixels normalized as (pixel - mean) / std
  (mean = std = 128 for the builtin student, what the device profiles' defaults feed);
- output ``scores``: (1, C, H, W) float32 class scores, NCHW.

Shapes are fixed (batch 1, the export's input size): onnx2tf, the TFLite converter and the Edge
TPU compiler all need static shapes, and a device runs one frame at a time. The opset is pinned
so that a torch upgrade cannot silently change the operators a Jetson's ONNX Runtime receives.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "scores"


class OnnxExportError(RuntimeError):
    """The ONNX file is not a valid model, or ONNX Runtime does not reproduce torch on it."""


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_size: tuple[int, int],
    *,
    tolerance: float = 1e-3,
) -> Path:
    """Write `model` (eval mode is set here) as ONNX at `path`, check it and run it once.

    The check runs the file through `onnx.checker` and ONNX Runtime on a random input and
    compares with torch (max abs difference of the scores under `tolerance`).
    """
    path = Path(path)
    model.eval()
    example = torch.rand(1, 3, *input_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation and constant-folding chatter; the checks below
        # judge what it wrote.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,  # the dynamo exporter needs onnxscript, which the trainer does not ship
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            do_constant_folding=True,  # folds BatchNorm into the convolutions
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"{path}: onnx.checker: {exc}") from exc
    with torch.no_grad():
        expected = model(example).numpy()
    got = run_onnx(path, example.numpy())
    difference = float(np.abs(got - expected).max())
    if got.shape != expected.shape or difference > tolerance:
        raise OnnxExportError(
            f"{path}: ONNX Runtime gives {got.shape} scores differing from torch's"
            f" {expected.shape} by up to {difference:.2e} (tolerance {tolerance:.0e})"
        )
    return path


def run_onnx(path: str | os.PathLike[str], image: np.ndarray) -> np.ndarray:
    """The ``scores`` of the ONNX file for one NCHW float32 ``image`` batch, on the CPU."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (scores,) = session.run([OUTPUT_NAME], {INPUT_NAME: image.astype(np.float32)})
    return scores
