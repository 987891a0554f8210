"""DNNGrad (seed 000 §3.3, §4): how the teacher's output utility moves with each input pixel.

The utility z is seed 000 §3.1's "elements with a confidence above θ", for segmentation the
pixels the teacher calls an object (not background) with confidence above θ, each counted by
its confidence so that z has a gradient (the indicator is held fixed, as an element's presence
is in the paper). One backward pass to the input, with no weight gradients (§4), on the last
sampled frame of an interval; none where no pixel passes θ (z is then 0, and so is its
gradient: §4's "removing unneeded computation", exact). The gradient's magnitude is averaged
over each 16x16 macroblock, H.264's coding unit (§4: one number per MCU), and quantised to one
byte per macroblock.

z is counted on the teacher's logits at its input size, after the bilinear resize that ends
DeepLab's graph. Counted on its own 33x33 grid instead, a pass cost about a quarter less on 2
CPU cores and the per-macroblock maps correlated 0.89-1.0 with these on the shared videos, yet
AMS with OneAdapt on its uplink fell from 82.86 to 79.74 % on the paper stream (the bottle
video, -8.46 points against +1.44): the loop is that sensitive to its knobs' path, so the maps
stay as they were measured (benchmarks/results/evaluate-oneadapt-ams/run.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cloud_trainer.student import TFLiteStudent
from shared_schema.gradient import GradientMap, block_means


def output_utility(logits: Tensor, threshold: float, background: int = 0) -> Tensor:
    """z (seed 000 §3.1): Σ over pixels whose most likely object class (any but ``background``)
    has a probability above ``threshold`` of that probability; ``logits`` (N, C, H, W)."""
    probs = torch.softmax(logits, dim=1)
    objects = torch.cat([probs[:, :background], probs[:, background + 1 :]], dim=1)
    confidence = objects.max(dim=1).values
    return (confidence * (confidence > threshold).detach()).sum()


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

    @staticmethod
    def backward_runs(utility: float) -> bool:
        """Whether a pass whose z came to ``utility`` back-propagates: not where z is 0 (no
        pixel above θ), as then its gradient is 0 too."""
        return utility != 0.0

    def pixels(self, rgb: np.ndarray) -> tuple[Tensor, float]:
        """∂z/∂pixel (H, W, 3) for one (H, W, 3) uint8 frame, per unit of pixel value, and z."""
        weight = next(self.module.parameters())  # its device, and its dtype (float64 in tests)
        pixels = torch.as_tensor(rgb, dtype=weight.dtype, device=weight.device)[None]
        pixels.requires_grad_(True)
        real = self.module.input_quant.from_grid(pixels)  # the input tensor's real values
        z = output_utility(self.module(real), self.threshold, self.background)
        utility = float(z.detach())
        if not self.backward_runs(utility):  # a zero gradient, exactly
            return torch.zeros_like(pixels[0]), utility
        (grad,) = torch.autograd.grad(z, pixels)
        return grad[0], utility

    def __call__(self, rgb: np.ndarray) -> tuple[GradientMap, float]:
        """The frame's DNNGrad per macroblock (§4), and its utility z."""
        grad, z = self.pixels(rgb)
        magnitude = grad.abs().sum(dim=2).cpu().numpy()
        height, width = rgb.shape[:2]
        return GradientMap(block_means(magnitude), width, height), z
