"""The TFLite ops the importer rebuilds, as torch modules, each in plain float and in fake-quant
(the integer kernels of LiteRT's XNNPACK path, emulated on the file's frozen grids).
RESIZE_BILINEAR, with its own interpolation arithmetic, is in `resize`.

In fake-quant an activation travels as the integer kernels hold it: integers in its grid's
units (q - zero_point, in float32), so no op divides its input back onto a grid (but a
concatenation, whose inputs may lie on other grids than its output); an op's `out` says which
grid its output is on, and the student turns only what it returns into real values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from ai_edge_litert import schema_py_generated as schema
from torch import Tensor, nn

from cloud_trainer.student.tflite.quantization import (
    ActQuant,
    QuantizedConstant,
    regrid,
    round_half_up,
    ste,
)
from cloud_trainer.student.tflite.tables import FLOAT_ACTIVATIONS


@dataclass
class Env:
    """What one forward pass shares between ops."""

    fake_quant: bool
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # runtime H, W per tensor


@dataclass(frozen=True)
class Node:
    """One op of the file, as the builders see it."""

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: object


def same_padding(
    size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> tuple[int, int, int, int]:
    """TFLite SAME padding for the runtime size (F.pad order); the odd pixel goes at the end."""
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class Op(nn.Module):
    """One TFLite op: reads the activation tensors `inputs`, writes the tensor `output`, on the
    grid `out` (None: not a quantized activation)."""

    out: ActQuant | None = None

    def __init__(self, node: Node, inputs: Sequence[int]) -> None:
        super().__init__()
        self.op_index = node.index
        self.op_name = node.name
        self.inputs = tuple(inputs)
        self.output = node.outputs[0]

    def extra_repr(self) -> str:
        return f"op={self.op_index}, {self.op_name}, inputs={self.inputs}, output={self.output}"


class Conv(Op):
    def __init__(
        self,
        node: Node,
        weight: QuantizedConstant,
        bias: QuantizedConstant | None,
        groups: int,
        inp: ActQuant,
        out: ActQuant,
    ) -> None:
        super().__init__(node, node.inputs[:1])
        options = node.options
        self.weight = weight
        self.bias = bias
        self.groups = groups
        self.stride = (options.strideH, options.strideW)
        self.dilation = (options.dilationHFactor, options.dilationWFactor)
        self.same_padding = options.padding == schema.Padding.SAME
        self.activation = options.fusedActivationFunction
        self.out = out
        # XNNPACK's requantization scale, computed in float32 as it does, per output channel.
        weight_scale = np.asarray(weight.spec.quant.scale, np.float32)
        multiplier = np.float32(inp.scale) * weight_scale / np.float32(out.scale)
        self._multiplier = multiplier.reshape(1, -1, 1, 1)

    def forward(self, args: list[Tensor], env: Env) -> Tensor:
        (x,) = args
        if env.fake_quant:
            # Integer-valued operands keep the float32 accumulator exact, as in the integer
            # kernels; q - zero_point is 0 where TFLite pads with the zero point.
            weight = self.weight.integers()
            bias = None if self.bias is None else self.bias.integers()
        else:
            weight = self.weight.master
            bias = None if self.bias is None else self.bias.master
        padding = (0, 0)
        if self.same_padding:
            left, right, top, bottom = same_padding(
                x.shape[2:], weight.shape[2:], self.stride, self.dilation
            )
            if (left, top) == (right, bottom):
                padding = (top, left)  # the convolution pads in place: no padded copy of x
            else:
                x = F.pad(x, (left, right, top, bottom))
        y = F.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups)
        if not env.fake_quant:
            return FLOAT_ACTIVATIONS[self.activation](y)
        return self.out.requantize(y, torch.from_numpy(self._multiplier).to(y.device))


class Add(Op):
    def __init__(self, node: Node, a: ActQuant, b: ActQuant, out: ActQuant) -> None:
        super().__init__(node, node.inputs)
        self.activation = node.options.fusedActivationFunction
        self.out = out
        ratios = [
            np.float32(a.scale) / np.float32(out.scale),
            np.float32(b.scale) / np.float32(out.scale),
        ]
        if min(ratios) >= 2.0**-10 and max(ratios) < 2.0**8:
            # XNNPACK's fixed point: the larger ratio gets 21 significant bits, both share a shift.
            shift = 21 - math.frexp(max(ratios))[1]
            ratios = [np.rint(r * np.float32(2.0**shift)) / 2.0**shift for r in ratios]
        self.ratios = (float(ratios[0]), float(ratios[1]))

    def forward(self, args: list[Tensor], env: Env) -> Tensor:
        a, b = args
        if not env.fake_quant:
            return FLOAT_ACTIVATIONS[self.activation](a + b)
        # float64 holds the 29-bit products exactly
        v = a.double() * self.ratios[0] + b.double() * self.ratios[1]
        return self.out.requantize(round_half_up(v).to(a.dtype))


class AveragePool(Op):
    def __init__(self, node: Node, whole_input: bool, inp: ActQuant, out: ActQuant) -> None:
        super().__init__(node, node.inputs[:1])
        options = node.options
        self.kernel = (options.filterHeight, options.filterWidth)
        self.stride = (options.strideH, options.strideW)
        self.same_padding = options.padding == schema.Padding.SAME
        # A window that covered the whole input in the file keeps covering it at any resolution.
        self.whole_input = whole_input
        self.activation = options.fusedActivationFunction
        self.inp = inp
        self.out = out

    def forward(self, args: list[Tensor], env: Env) -> Tensor:
        (x,) = args
        if env.fake_quant:
            x = self.inp.to_grid(x)
        if self.whole_input:
            total = x.sum(dim=(2, 3), keepdim=True)
            count = torch.tensor(float(x.shape[2] * x.shape[3]), device=x.device)
        else:
            pad = (0, 0, 0, 0)
            if self.same_padding:
                pad = same_padding(x.shape[2:], self.kernel, self.stride, (1, 1))
            ones = torch.ones_like(x[:1, :1])
            # TFLite leaves padded cells out of the count, so count the real cells per window.
            total = F.avg_pool2d(F.pad(x, pad), self.kernel, self.stride, divisor_override=1)
            count = F.avg_pool2d(F.pad(ones, pad), self.kernel, self.stride, divisor_override=1)
        if not env.fake_quant:
            return FLOAT_ACTIVATIONS[self.activation](total / count)
        # The integer kernel computes (sum + count / 2) / count: round half up on the input grid.
        mean = (total + torch.floor(count / 2)) / count
        return self.out.requantize(regrid(ste(mean, torch.floor(mean)), self.inp, self.out))


class Concatenation(Op):
    def __init__(self, node: Node, axis: int, grids: Sequence[ActQuant], out: ActQuant) -> None:
        super().__init__(node, node.inputs)
        self.axis = axis
        self.activation = node.options.fusedActivationFunction
        self.grids = tuple(grids)
        self.out = out

    def forward(self, args: list[Tensor], env: Env) -> Tensor:
        if not env.fake_quant:
            return FLOAT_ACTIVATIONS[self.activation](torch.cat(args, self.axis))
        # Each input on its own grid: their real values, snapped to the output's grid (whose
        # clamp range already includes the fused activation).
        real = [grid.real(x) for grid, x in zip(self.grids, args, strict=True)]
        return self.out.quantize(torch.cat(real, self.axis))


class Quantize(Op):
    def __init__(self, node: Node, inp: ActQuant, out: ActQuant) -> None:
        super().__init__(node, node.inputs[:1])
        self.out = out
        ratio = np.float32(inp.scale) / np.float32(out.scale)
        # XNNPACK takes requantizations with ratios in [2^-8, 128] and multiplies by the ratio
        # rounded to 8 fractional bits; TFLite's own kernel (outside that range) is exact.
        if 2.0**-8 <= ratio <= 128.0:
            ratio = np.rint(np.float32(256.0) * ratio) / 256.0
        self.ratio = float(ratio)

    def forward(self, args: list[Tensor], env: Env) -> Tensor:
        (x,) = args
        if not env.fake_quant:
            return x
        v = x * self.ratio
        return self.out.requantize(round_half_up(v))


class Mean(Op):
    def __init__(self, node: Node, axes: tuple[int, ...], inp: ActQuant, out: ActQuant) -> None:
        super().__init__(node, node.inputs[:1])
        self.axes = axes
        self.keep_dims = bool(node.options.keepDims)
        self.inp = inp
        self.out = out

    def forward(self, args: list[Tensor], env: Env) -> Tensor:
        (x,) = args
        if not env.fake_quant:
            return x.mean(self.axes, keepdim=self.keep_dims)
        # An exact integer sum, rescaled and rounded once: LiteRT's int8 MEAN over the spatial
        # axes (an image-pooling branch) to the bit.
        count = math.prod(x.shape[a] for a in self.axes)
        total = x.sum(self.axes, keepdim=self.keep_dims)
        return self.out.requantize(total * (self.inp.scale / (self.out.scale * count)))


class Pad(Op):
    def __init__(self, node: Node, pad: tuple[int, ...], grid: ActQuant) -> None:
        super().__init__(node, node.inputs[:1])
        self.pad = pad  # F.pad order: last torch axis first
        self.out = grid  # its input's

    def forward(self, args: list[Tensor], env: Env) -> Tensor:
        # TFLite pads quantized tensors with their zero point: real 0, and 0 in the grid's units.
        return F.pad(args[0], self.pad)


class ArgMax(Op):
    def __init__(self, node: Node, axis: int) -> None:
        super().__init__(node, node.inputs[:1])
        self.axis = axis

    def forward(self, args: list[Tensor], env: Env) -> Tensor:
        (x,) = args
        return x.argmax(self.axis)
