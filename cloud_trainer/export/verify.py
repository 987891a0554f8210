"""How far an exported model agrees with the torch model it came from.

The exported file runs through the device's own back-end (`edge_runtime.backends`: LiteRT for
.tflite, ONNX Runtime for .onnx) with the device's own pre- and post-processing, on frames the
quantizer never saw; the torch model runs in float on the same frames. Pixel agreement is the
fraction of pixels whose argmax labels match, averaged over the frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.backends import LiteRtConfig, OnnxRuntimeConfig, open_engine
from edge_runtime.backends.base import BackendConfig


@dataclass(frozen=True)
class Agreement:
    pixel_agreement: float  # mean over frames
    min_frame_agreement: float
    frames: int


def agreement(labels: np.ndarray, reference: np.ndarray) -> Agreement:
    """Agreement of two (N, H, W) label stacks."""
    if labels.shape != reference.shape:
        raise ValueError(f"label maps of shape {labels.shape} and {reference.shape}")
    per_frame = (labels == reference).mean(axis=(1, 2))
    return Agreement(float(per_frame.mean()), float(per_frame.min()), len(per_frame))


def backend_config(
    model: bytes, input_size: tuple[int, int], mean: float, std: float
) -> BackendConfig:
    """The back-end a device would run this model file on (by its content, not its name)."""
    is_tflite = len(model) >= 8 and model[4:8] == b"TFL3"
    config = LiteRtConfig if is_tflite else OnnxRuntimeConfig
    return config(input_size=input_size, input_mean=mean, input_std=std)


def device_labels(
    model: bytes, frames: np.ndarray, *, mean: float = 128.0, std: float = 128.0
) -> np.ndarray:
    """(N, H, W) labels of the model file for NHWC uint8 frames, as a device computes them."""
    config = backend_config(model, (frames.shape[1], frames.shape[2]), mean, std)
    with open_engine(config, model) as engine:
        return np.stack([engine.infer(frame) for frame in frames])
