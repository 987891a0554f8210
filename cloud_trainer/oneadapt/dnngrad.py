"""DNNGrad (seed 000 §3.3, §4): how the teacher's output utility moves with each input pixel.

The utility z is seed 000 §3.1's "elements with a confidence above θ", for segmentation the
pixels the teacher calls an object (not background) with confidence above θ, each counted by
its confidence so that z has a gradient (the indicator is held fixed, as an element's presence
is in the paper). One backward pass to the input, with no weight gradients (§4), on the last
sampled frame of an interval. The gradient's magnitude is averaged over each 16x16 macroblock,
H.264's coding unit (§4: one number per MCU), and quantised to one byte per macroblock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cloud_trainer.student import TFLiteStudent

MACROBLOCK = 16  # pixels per side of H.264's coding unit


def output_utility(logits: Tensor, threshold: float, background: int = 0) -> Tensor:
    """z (seed 000 §3.1): Σ over pixels whose most likely object class (any but ``background``)
    has a probability above ``threshold`` of that probability; ``logits`` (N, C, H, W)."""
    probs = torch.softmax(logits, dim=1)
    objects = torch.cat([probs[:, :background], probs[:, background + 1 :]], dim=1)
    confidence = objects.max(dim=1).values
    return (confidence * (confidence > threshold).detach()).sum()


@dataclass(frozen=True)
class GradientMap:
    """|∂z/∂pixel| averaged per macroblock of a ``width`` × ``height`` picture (rows, cols)."""

    values: np.ndarray  # (rows, cols) float32, per unit of 8-bit pixel value
    width: int
    height: int

    def quantized(self) -> tuple[bytes, float]:
        """One byte per macroblock, row by row, and the value 255 stands for (linear)."""
        top = float(self.values.max())
        if top <= 0.0:
            return bytes(self.values.size), 0.0
        return np.round(self.values / top * 255.0).astype(np.uint8).tobytes(), top

    @classmethod
    def of_bytes(cls, data: bytes, scale: float, width: int, height: int) -> GradientMap:
        """The map ``quantized`` gave (``data`` one byte per macroblock of the picture)."""
        rows, cols = -(-height // MACROBLOCK), -(-width // MACROBLOCK)
        q = np.frombuffer(data, np.uint8)
        if q.size != rows * cols:
            raise ValueError(f"{q.size} bytes for {rows} x {cols} macroblocks")
        return cls((q.astype(np.float32) * (scale / 255.0)).reshape(rows, cols), width, height)


class DnnGrad:
    """The teacher's DNNGrad on one frame at a time (its own float copy: no fake quantization,
    whose rounding has no useful gradient; no weight gradients)."""

    def __init__(self, teacher: TFLiteStudent, threshold: float = 0.5, background: int = 0):
        self.module = teacher.eval()
        self.module.fake_quant = False
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.threshold = threshold
        self.background = background

    def pixels(self, rgb: np.ndarray) -> Tensor:
        """∂z/∂pixel (H, W, 3) for one (H, W, 3) uint8 frame, per unit of pixel value."""
        weight = next(self.module.parameters())  # its device, and its dtype (float64 in tests)
        pixels = torch.as_tensor(rgb, dtype=weight.dtype, device=weight.device)[None]
        pixels.requires_grad_(True)
        real = self.module.input_quant.from_grid(pixels)  # the input tensor's real values
        z = output_utility(self.module(real), self.threshold, self.background)
        (grad,) = torch.autograd.grad(z, pixels)
        return grad[0]

    def __call__(self, rgb: np.ndarray) -> GradientMap:
        """The frame's DNNGrad, per macroblock (§4)."""
        magnitude = self.pixels(rgb).abs().sum(dim=2)[None, None]  # (1, 1, H, W)
        per_block = F.avg_pool2d(magnitude, MACROBLOCK, ceil_mode=True)[0, 0]
        height, width = rgb.shape[:2]
        return GradientMap(per_block.cpu().numpy().astype(np.float32), width, height)
