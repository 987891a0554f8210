"""The frozen quantization grids of a TFLite file, in torch: trainable constants (float master
values snapped to their file's grid), activation grids, and the straight-through rounding that
lets gradients through them. Scales, zero points and stored values are read by
`shared_schema.tflite_file`; this module only does torch arithmetic on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ai_edge_litert import schema_py_generated as schema
from torch import Tensor, nn

from cloud_trainer.student.tflite.tables import ACTIVATION_BOUNDS
from shared_schema.tflite_file import ConstTensor, TensorInfo, round_half_away

_Ctx = torch.autograd.function.FunctionCtx

# Storage dtypes an activation may have: the importer emulates 8-bit integer kernels.
_ACTIVATION_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8))


@dataclass(frozen=True)
class QuantParams:
    """Frozen quantization of one tensor: real = scale * (q - zero_point)."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quantized_dimension: int  # TFLite-layout axis the scales run along when per-channel


@dataclass(frozen=True)
class ConstantSpec:
    """Where a trainable constant lives in the flatbuffer and how the file quantizes it."""

    tensor_index: int
    buffer_index: int
    name: str
    dtype: np.dtype  # storage dtype in the file
    shape: tuple[int, ...]  # TFLite layout
    quant: QuantParams
    permutation: tuple[int, ...]  # TFLite axes in the order the torch parameter stores them

    @classmethod
    def of(cls, tensor: ConstTensor, permutation: tuple[int, ...]) -> ConstantSpec:
        quant = QuantParams(
            tuple(float(s) for s in tensor.scale),
            tuple(int(z) for z in tensor.zero_point),
            tensor.quantized_dimension,
        )
        return cls(
            tensor.index, tensor.buffer, tensor.name, tensor.dtype, tensor.shape, quant, permutation
        )


def _round_half_away(x: Tensor) -> Tensor:
    # tflite_file.round_half_away in torch: master values live on any device, with gradients
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def ste(x: Tensor, snapped: Tensor) -> Tensor:
    """`snapped` in the forward pass, identity gradient to `x` in the backward pass."""
    if not x.requires_grad:
        return snapped
    return x + (snapped - x).detach()


class _RoundHalfUp(torch.autograd.Function):
    """floor(v + 0.5) - offset, straight through: `ste(v, torch.floor(v + 0.5)) - offset` in
    place, in one new tensor."""

    @staticmethod
    def forward(ctx: _Ctx, v: Tensor, offset: float) -> Tensor:
        return _round_half_up(v, offset)

    @staticmethod
    def backward(ctx: _Ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def _round_half_up(v: Tensor, offset: float) -> Tensor:
    rounded = torch.add(v, 0.5).floor_()
    return rounded.sub_(offset) if offset else rounded


def round_half_up(v: Tensor, offset: float = 0.0) -> Tensor:
    """floor(v + 0.5) - offset: the integer kernels' rounding (half up), then that integer on a
    grid of zero point ``offset``, in its units (q - zero_point); straight-through gradient."""
    if v.requires_grad:
        return _RoundHalfUp.apply(v, float(offset))
    return _round_half_up(v, offset)


def _rounded(v: Tensor, multiplier: Tensor | None) -> Tensor:
    """round(v * multiplier) (half to even) in a new tensor."""
    return torch.round(v) if multiplier is None else torch.mul(v, multiplier).round_()


class _Requantize(torch.autograd.Function):
    """clamp(round(v * multiplier), low, high) with a straight-through gradient that the clamp
    stops outside the range: what `ste(v * multiplier, round(...)).clamp(low, high)` computes,
    to the bit, in fewer passes and keeping only the clamp's mask."""

    @staticmethod
    def forward(ctx: _Ctx, v: Tensor, multiplier: Tensor | None, low: float, high: float) -> Tensor:
        rounded = _rounded(v, multiplier)
        clamped = rounded.clamp(low, high)
        ctx.save_for_backward(_inside(rounded, clamped), multiplier)
        return clamped

    @staticmethod
    def backward(ctx: _Ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        inside, multiplier = ctx.saved_tensors  # type: ignore[attr-defined]
        grad = grad * inside
        return (grad if multiplier is None else grad.mul_(multiplier)), None, None, None


def _inside(rounded: Tensor, clamped: Tensor) -> Tensor:
    """1.0 where the clamp left an integer as it was, 0.0 where it moved it (by 1 or more), in
    ``rounded``'s memory: in float arithmetic, as CPU kernels on bool masks (``!=``,
    ``masked_fill_``) run several times slower than these in-place passes. It keeps four bytes a
    value where a bool mask kept one, and a NaN gradient stays NaN where the clamp stops it."""
    return rounded.sub_(clamped).abs_().neg_().add_(1.0).clamp_min_(0.0)


class QuantizedConstant(nn.Module):
    """A weight or bias tensor: float master values plus the frozen quantization of the file."""

    def __init__(self, spec: ConstantSpec, stored: np.ndarray) -> None:
        super().__init__()
        self.spec = spec
        info = np.iinfo(spec.dtype)
        self._qmin, self._qmax = float(info.min), float(info.max)
        broadcast = [1] * len(spec.shape)
        if len(spec.quant.scale) > 1:
            broadcast[spec.permutation.index(spec.quant.quantized_dimension)] = -1
        # float64 so that int32 biases of any size survive the round trip to the grid exactly
        self._scale = np.asarray(spec.quant.scale, np.float64).reshape(broadcast)
        self._zero_point = np.asarray(spec.quant.zero_point, np.float64).reshape(broadcast)
        master = stored.astype(np.float64).transpose(spec.permutation) - self._zero_point
        self.master = nn.Parameter(torch.from_numpy(master * self._scale).float())

    def _to_grid(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The master values as integers on the frozen grid, clamped to the storage range."""
        device = self.master.device
        scale = torch.from_numpy(self._scale).to(device)
        zero_point = torch.from_numpy(self._zero_point).to(device)
        q = _round_half_away(self.master.detach().double() / scale) + zero_point
        representable = (q >= self._qmin) & (q <= self._qmax)
        return q.clamp(self._qmin, self._qmax), representable, scale, zero_point

    def integers(self) -> Tensor:
        """q - zero_point of the fake-quantized values, as the integer kernels multiply them.

        The gradient reaches the master values straight through (scaled by 1 / scale), except
        where a value has left the storage range and cannot move further out.
        """
        q, representable, scale, zero_point = self._to_grid()
        through = (representable / scale).to(self.master.dtype)
        offset = self.master - self.master.detach()  # zero, but carries the gradient
        return (q - zero_point).to(self.master.dtype) + offset * through

    def saturated(self) -> int:
        """How many master values lie beyond the storage range: the file holds them clamped."""
        return int((~self._to_grid()[1]).sum())

    def stored(self) -> np.ndarray:
        """The values as the file stores them: storage dtype, TFLite layout."""
        q, _, _, _ = self._to_grid()
        layout = np.argsort(self.spec.permutation)
        return q.cpu().numpy().transpose(layout).astype(self.spec.dtype)

    def real(self) -> np.ndarray:
        """The master values themselves (float32, TFLite layout), on no grid."""
        layout = np.argsort(self.spec.permutation)
        return self.master.detach().cpu().numpy().transpose(layout)

    @torch.no_grad()
    def load(self, real: np.ndarray) -> None:
        """Take these real values (TFLite layout, flat or shaped) as the master values."""
        values = np.asarray(real, np.float64).reshape(self.spec.shape)
        master = torch.from_numpy(values.transpose(self.spec.permutation).astype(np.float32))
        self.master.copy_(master)


@dataclass(frozen=True)
class ActQuant:
    """Frozen per-tensor quantization of an activation tensor."""

    scale: float
    zero_point: int
    qmin: int  # storage range, narrowed by the producer's fused activation
    qmax: int

    @classmethod
    def of(
        cls, tensor: TensorInfo, activation: int = schema.ActivationFunctionType.NONE
    ) -> ActQuant:
        """The grid of an activation tensor whose producer fuses `activation`."""
        if tensor.dtype not in _ACTIVATION_DTYPES or tensor.scale.size != 1:
            raise ValueError(
                f"tensor {tensor.index} ({tensor.name}) is not a per-tensor uint8/int8 quantized"
                " activation; only fully quantized models can be imported"
            )
        scale = np.float32(tensor.scale[0])
        zero_point = int(tensor.zero_point[0])
        info = np.iinfo(tensor.dtype)
        low, high = ACTIVATION_BOUNDS[activation]

        def to_q(value: float) -> int:
            # TFLite's CalculateActivationRangeQuantized: divided in float32, std::round
            return zero_point + int(round_half_away(np.float64(np.float32(value) / scale)))

        qmin = info.min if low is None else max(info.min, to_q(low))
        qmax = info.max if high is None else min(info.max, to_q(high))
        return cls(float(scale), zero_point, qmin, qmax)

    def quantize(self, x: Tensor) -> Tensor:
        """Real values snapped to this grid, in its units (q - zero_point)."""
        return self.requantize(x / self.scale)

    def requantize(self, v: Tensor, multiplier: Tensor | None = None) -> Tensor:
        """v * multiplier (a value in output units; the multiplier per channel, or none) on
        this grid, in its units (q - zero_point), rounded half to even and clamped.

        XNNPACK rounds half to even; TFLite's reference kernels round half away from zero, but
        exact ties practically never occur in a requantized accumulator.
        """
        low, high = self.qmin - self.zero_point, self.qmax - self.zero_point
        if v.requires_grad:
            return _Requantize.apply(v, multiplier, float(low), float(high))
        return _rounded(v, multiplier).clamp_(low, high)

    def real(self, units: Tensor) -> Tensor:
        """The real values of integers in this grid's units."""
        return units * self.scale

    def to_grid(self, units: Tensor) -> Tensor:
        """q of integers in this grid's units."""
        return units + self.zero_point

    def from_grid(self, q: Tensor) -> Tensor:
        return self.real(q - self.zero_point)


def regrid(q: Tensor, inp: ActQuant, out: ActQuant) -> Tensor:
    """q on the input grid, in output units; a no-op where both grids are the same."""
    if (inp.scale, inp.zero_point) == (out.scale, out.zero_point):
        return q - out.zero_point
    return (q - inp.zero_point) * (inp.scale / out.scale)
