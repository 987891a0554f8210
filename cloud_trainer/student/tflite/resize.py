"""RESIZE_BILINEAR as TFLite computes it: its source positions and fractions in float32, and the
uint8 kernel's rounding, with the output size following the input's resolution."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cloud_trainer.student.tflite.ops import Env, Node, Op
from cloud_trainer.student.tflite.quantization import ActQuant, regrid, round_half_up


def _interpolation_points(
    in_size: int, out_size: int, align_corners: bool, half_pixel_centers: bool, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Source rows (or columns) and fractions of TFLite's RESIZE_BILINEAR, in its float32 math."""
    if align_corners and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    scale_t = torch.tensor(scale, dtype=torch.float32, device=device)
    position = torch.arange(out_size, dtype=torch.float32, device=device)
    position = (position + 0.5) * scale_t - 0.5 if half_pixel_centers else position * scale_t
    lower = torch.floor(position).clamp(min=0)
    upper = torch.ceil(position).clamp(max=in_size - 1)
    return lower.long(), upper.long(), position - lower


def _interpolation_matrix(
    in_size: int, out_size: int, align_corners: bool, half_pixel_centers: bool, device: torch.device
) -> Tensor:
    """(out_size, in_size) weights of one axis of TFLite's RESIZE_BILINEAR."""
    lower, upper, fraction = _interpolation_points(
        in_size, out_size, align_corners, half_pixel_centers, device
    )
    rows = torch.arange(out_size, device=device)
    matrix = torch.zeros(out_size, in_size, device=device)
    matrix.index_put_((rows, lower), 1 - fraction, accumulate=True)
    matrix.index_put_((rows, upper), fraction, accumulate=True)
    return matrix


def _bilinear(
    x: Tensor, size: tuple[int, int], align_corners: bool, half_pixel_centers: bool
) -> Tensor:
    # Separable products, far cheaper than gathering four corners per output pixel. They equal
    # the kernel's four-term sum exactly when the weights are dyadic, as for DeepLab's 16k+1
    # sizes (integer inputs stay on a 1/256 grid), and to float rounding otherwise.
    rows = _interpolation_matrix(x.shape[2], size[0], align_corners, half_pixel_centers, x.device)
    cols = _interpolation_matrix(x.shape[3], size[1], align_corners, half_pixel_centers, x.device)
    return torch.matmul(torch.matmul(rows.to(x.dtype), x), cols.to(x.dtype).T)


class ResizeBilinear(Op):
    def __init__(
        self,
        node: Node,
        size: tuple[int, int],
        size_of: int | None,
        inp: ActQuant,
        out: ActQuant,
    ) -> None:
        super().__init__(node, node.inputs[:1])
        self.size = size
        # The constant output size stands for the size of this tensor, which varies with the input.
        self.size_of = size_of
        self.align_corners = node.options.alignCorners
        self.half_pixel_centers = node.options.halfPixelCenters
        self.inp = inp
        self.out = out

    def forward(self, args: list[Tensor], env: Env) -> Tensor:
        (x,) = args
        size = self.size if self.size_of is None else env.sizes[self.size_of]
        if not env.fake_quant:
            return _bilinear(x, size, self.align_corners, self.half_pixel_centers)
        y = _bilinear(self.inp.to_grid(x), size, self.align_corners, self.half_pixel_centers)
        # The uint8 kernel adds 0.5 and truncates.
        if self.inp == self.out:
            # An interpolation of values on the grid stays inside its range: nothing to clamp.
            return round_half_up(y, self.out.zero_point)
        return self.out.requantize(regrid(round_half_up(y), self.inp, self.out))
