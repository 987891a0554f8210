"""Import a quantized TFLite flatbuffer as a trainable torch module.

Devices run an int8/uint8 TFLite student. The trainer rebuilds that graph op by op in torch so it
can fine-tune the very network the device runs: constant weights and biases become float "master"
parameters, and in fake-quant mode every weight and every activation is snapped to the frozen
quantization grid stored in the file, with straight-through gradients, so the forward pass
emulates the integer kernels. `quantized_weights` writes the master weights back at the same
frozen scales, in the file's storage dtype and layout, ready to be patched into the flatbuffer's
weight buffers without a converter.

Layouts: `TFLiteStudent.forward` takes an NHWC batch (the layout of the TFLite input tensor and of
decoded video frames) and returns NCHW logits (the layout torch losses expect).

Fake-quant arithmetic follows LiteRT's default CPU path, where the XNNPACK delegate runs the uint8
ops: convolutions accumulate exact integers and requantize with a float32 multiplier rounded half
to even, ADD uses XNNPACK's 21-bit fixed-point multipliers and uint8 QUANTIZE its 8-bit one, and
average pooling and bilinear resizing round half up on the integer grid like TFLite's kernels,
and MEAN rounds its exact sum once.
With the pinned LiteRT this reproduces every intermediate tensor of the Coral DeepLab models bit
for bit; LiteRT's reference kernels (no XNNPACK) round a few ties differently.
"""

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ai_edge_litert import schema_py_generated as schema
from torch import Tensor, nn

_OP_NAMES = {
    code: name
    for name, code in vars(schema.BuiltinOperator).items()
    if not name.startswith("_") and isinstance(code, int)
}
_ACTIVATION_NAMES = {
    code: name
    for name, code in vars(schema.ActivationFunctionType).items()
    if not name.startswith("_") and isinstance(code, int)
}
# Explicit little-endian dtypes: flatbuffer buffers are little-endian whatever the host is.
_STORAGE_DTYPES = {
    schema.TensorType.UINT8: np.dtype("<u1"),
    schema.TensorType.INT8: np.dtype("<i1"),
    schema.TensorType.INT32: np.dtype("<i4"),
}
_ACTIVATION_TYPES = (schema.TensorType.UINT8, schema.TensorType.INT8)
_INDEX_TYPES = {schema.TensorType.INT32: np.dtype("<i4"), schema.TensorType.INT64: np.dtype("<i8")}
# Where each NHWC axis of a rank-4 TFLite tensor lives in the NCHW torch tensor.
_NHWC_TO_NCHW_AXIS = (0, 2, 3, 1)
# TFLite filter layouts, permuted into torch's conv weight layouts.
_CONV_WEIGHT_TO_TORCH = (0, 3, 1, 2)  # OHWI -> OIHW
_DEPTHWISE_WEIGHT_TO_TORCH = (3, 0, 1, 2)  # 1HWC -> C1HW
_BIAS_TO_TORCH = (0,)

_FLOAT_ACTIVATIONS: dict[int, Callable[[Tensor], Tensor]] = {
    schema.ActivationFunctionType.NONE: lambda x: x,
    schema.ActivationFunctionType.RELU: F.relu,
    schema.ActivationFunctionType.RELU6: F.relu6,
    schema.ActivationFunctionType.RELU_N1_TO_1: lambda x: x.clamp(-1.0, 1.0),
}
# Real-valued clamp bounds of each fused activation (None: unbounded on that side).
_ACTIVATION_BOUNDS: dict[int, tuple[float | None, float | None]] = {
    schema.ActivationFunctionType.NONE: (None, None),
    schema.ActivationFunctionType.RELU: (0.0, None),
    schema.ActivationFunctionType.RELU6: (0.0, 6.0),
    schema.ActivationFunctionType.RELU_N1_TO_1: (-1.0, 1.0),
}


class UnsupportedOpsError(ValueError):
    """The model uses ops (or op variants) that the importer cannot rebuild in torch."""

    def __init__(self, ops: Sequence[str]) -> None:
        self.ops = tuple(ops)
        message = "unsupported TFLite ops: " + ", ".join(self.ops)
        if any(op.startswith("edgetpu") for op in self.ops):
            message += (
                " (an Edge TPU-compiled model runs its graph inside one custom op; import the CPU"
                " .tflite it was compiled from instead)"
            )
        super().__init__(message)


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


def _round_half_away(x: Tensor) -> Tensor:
    # std::round, as TFLite's own quantizer rounds constants
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _ste(x: Tensor, snapped: Tensor) -> Tensor:
    """`snapped` in the forward pass, identity gradient to `x` in the backward pass."""
    if not x.requires_grad:
        return snapped
    return x + (snapped - x).detach()


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

    def stored(self) -> np.ndarray:
        """The values as the file stores them: storage dtype, TFLite layout."""
        q, _, _, _ = self._to_grid()
        layout = np.argsort(self.spec.permutation)
        return q.cpu().numpy().transpose(layout).astype(self.spec.dtype)


@dataclass(frozen=True)
class _ActQuant:
    """Frozen per-tensor quantization of an activation tensor."""

    scale: float
    zero_point: int
    qmin: int  # storage range, narrowed by the producer's fused activation
    qmax: int

    def fake(self, x: Tensor) -> Tensor:
        """Real values snapped to this grid."""
        return self.requantize(x / self.scale)

    def requantize(self, v: Tensor) -> Tensor:
        """Real values of v, a value in output units (q - zero_point), rounded half to even.

        XNNPACK rounds half to even; TFLite's reference kernels round half away from zero, but
        exact ties practically never occur in a requantized accumulator.
        """
        low, high = self.qmin - self.zero_point, self.qmax - self.zero_point
        if v.requires_grad:
            # clamp passes no gradient outside the range, like the clamp in the kernels
            return _ste(v, torch.round(v)).clamp(low, high) * self.scale
        return torch.round(v).clamp_(low, high).mul_(self.scale)

    def to_int(self, x: Tensor) -> Tensor:
        """q - zero_point of an already fake-quantized tensor (rounding removes float noise)."""
        v = x / self.scale
        return _ste(v, torch.round(v))

    def to_grid(self, x: Tensor) -> Tensor:
        """q of an already fake-quantized tensor."""
        return self.to_int(x) + self.zero_point

    def from_grid(self, q: Tensor) -> Tensor:
        return (q - self.zero_point) * self.scale


@dataclass
class _Env:
    """What one forward pass shares between ops."""

    fake_quant: bool
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # runtime H, W per tensor


@dataclass(frozen=True)
class _Node:
    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: object


def _regrid(q: Tensor, inp: _ActQuant, out: _ActQuant) -> Tensor:
    """q on the input grid, in output units; a no-op where both grids are the same."""
    if (inp.scale, inp.zero_point) == (out.scale, out.zero_point):
        return q - out.zero_point
    return (q - inp.zero_point) * (inp.scale / out.scale)


def _finish(y: Tensor, out: _ActQuant, activation: int, fake_quant: bool) -> Tensor:
    if fake_quant:
        return out.fake(y)  # the clamp range already includes the fused activation
    return _FLOAT_ACTIVATIONS[activation](y)


def _same_padding(
    size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> tuple[int, int, int, int]:
    """TFLite SAME padding for the runtime size (F.pad order); the odd pixel goes at the end."""
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class _Op(nn.Module):
    """One TFLite op: reads the activation tensors `inputs`, writes the tensor `output`."""

    def __init__(self, node: _Node, inputs: Sequence[int]) -> None:
        super().__init__()
        self.op_index = node.index
        self.op_name = node.name
        self.inputs = tuple(inputs)
        self.output = node.outputs[0]

    def extra_repr(self) -> str:
        return f"op={self.op_index}, {self.op_name}, inputs={self.inputs}, output={self.output}"


class _Conv(_Op):
    def __init__(
        self,
        node: _Node,
        weight: QuantizedConstant,
        bias: QuantizedConstant | None,
        groups: int,
        inp: _ActQuant,
        out: _ActQuant,
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
        self.inp = inp
        self.out = out
        # XNNPACK's requantization scale, computed in float32 as it does, per output channel.
        weight_scale = np.asarray(weight.spec.quant.scale, np.float32)
        multiplier = np.float32(inp.scale) * weight_scale / np.float32(out.scale)
        self._multiplier = multiplier.reshape(1, -1, 1, 1)

    def forward(self, args: list[Tensor], env: _Env) -> Tensor:
        (x,) = args
        if env.fake_quant:
            # Integer-valued operands keep the float32 accumulator exact, as in the integer
            # kernels; q - zero_point is 0 where TFLite pads with the zero point.
            x = self.inp.to_int(x)
            weight = self.weight.integers()
            bias = None if self.bias is None else self.bias.integers()
        else:
            weight = self.weight.master
            bias = None if self.bias is None else self.bias.master
        if self.same_padding:
            pad = _same_padding(x.shape[2:], weight.shape[2:], self.stride, self.dilation)
            x = F.pad(x, pad)
        y = F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        if not env.fake_quant:
            return _FLOAT_ACTIVATIONS[self.activation](y)
        return self.out.requantize(y * torch.from_numpy(self._multiplier).to(y.device))


class _Add(_Op):
    def __init__(self, node: _Node, a: _ActQuant, b: _ActQuant, out: _ActQuant) -> None:
        super().__init__(node, node.inputs)
        self.activation = node.options.fusedActivationFunction
        self.a = a
        self.b = b
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

    def forward(self, args: list[Tensor], env: _Env) -> Tensor:
        a, b = args
        if not env.fake_quant:
            return _FLOAT_ACTIVATIONS[self.activation](a + b)
        # float64 holds the 29-bit products exactly
        v = self.a.to_int(a).double() * self.ratios[0] + self.b.to_int(b).double() * self.ratios[1]
        rounded = torch.floor(v + 0.5)  # the integer kernels round half up
        return self.out.requantize(_ste(v, rounded).to(a.dtype))


class _AveragePool(_Op):
    def __init__(self, node: _Node, whole_input: bool, inp: _ActQuant, out: _ActQuant) -> None:
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

    def forward(self, args: list[Tensor], env: _Env) -> Tensor:
        (x,) = args
        if env.fake_quant:
            x = self.inp.to_grid(x)
        if self.whole_input:
            total = x.sum(dim=(2, 3), keepdim=True)
            count = torch.tensor(float(x.shape[2] * x.shape[3]), device=x.device)
        else:
            pad = (0, 0, 0, 0)
            if self.same_padding:
                pad = _same_padding(x.shape[2:], self.kernel, self.stride, (1, 1))
            ones = torch.ones_like(x[:1, :1])
            # TFLite leaves padded cells out of the count, so count the real cells per window.
            total = F.avg_pool2d(F.pad(x, pad), self.kernel, self.stride, divisor_override=1)
            count = F.avg_pool2d(F.pad(ones, pad), self.kernel, self.stride, divisor_override=1)
        if not env.fake_quant:
            return _FLOAT_ACTIVATIONS[self.activation](total / count)
        # The integer kernel computes (sum + count / 2) / count: round half up on the input grid.
        mean = (total + torch.floor(count / 2)) / count
        return self.out.requantize(_regrid(_ste(mean, torch.floor(mean)), self.inp, self.out))


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


class _ResizeBilinear(_Op):
    def __init__(
        self,
        node: _Node,
        size: tuple[int, int],
        size_of: int | None,
        inp: _ActQuant,
        out: _ActQuant,
    ) -> None:
        super().__init__(node, node.inputs[:1])
        self.size = size
        # The constant output size stands for the size of this tensor, which varies with the input.
        self.size_of = size_of
        self.align_corners = node.options.alignCorners
        self.half_pixel_centers = node.options.halfPixelCenters
        self.inp = inp
        self.out = out

    def forward(self, args: list[Tensor], env: _Env) -> Tensor:
        (x,) = args
        size = self.size if self.size_of is None else env.sizes[self.size_of]
        if not env.fake_quant:
            return _bilinear(x, size, self.align_corners, self.half_pixel_centers)
        y = _bilinear(self.inp.to_grid(x), size, self.align_corners, self.half_pixel_centers)
        # The uint8 kernel adds 0.5 and truncates.
        return self.out.requantize(_regrid(_ste(y, torch.floor(y + 0.5)), self.inp, self.out))


class _Concatenation(_Op):
    def __init__(self, node: _Node, axis: int, out: _ActQuant) -> None:
        super().__init__(node, node.inputs)
        self.axis = axis
        self.activation = node.options.fusedActivationFunction
        self.out = out

    def forward(self, args: list[Tensor], env: _Env) -> Tensor:
        return _finish(torch.cat(args, self.axis), self.out, self.activation, env.fake_quant)


class _Quantize(_Op):
    def __init__(self, node: _Node, inp: _ActQuant, out: _ActQuant) -> None:
        super().__init__(node, node.inputs[:1])
        self.inp = inp
        self.out = out
        ratio = np.float32(inp.scale) / np.float32(out.scale)
        # XNNPACK takes requantizations with ratios in [2^-8, 128] and multiplies by the ratio
        # rounded to 8 fractional bits; TFLite's own kernel (outside that range) is exact.
        if 2.0**-8 <= ratio <= 128.0:
            ratio = np.rint(np.float32(256.0) * ratio) / 256.0
        self.ratio = float(ratio)

    def forward(self, args: list[Tensor], env: _Env) -> Tensor:
        (x,) = args
        if not env.fake_quant:
            return x
        v = self.inp.to_int(x) * self.ratio
        return self.out.requantize(_ste(v, torch.floor(v + 0.5)))


class _Mean(_Op):
    def __init__(self, node: _Node, axes: tuple[int, ...], inp: _ActQuant, out: _ActQuant) -> None:
        super().__init__(node, node.inputs[:1])
        self.axes = axes
        self.keep_dims = bool(node.options.keepDims)
        self.inp = inp
        self.out = out

    def forward(self, args: list[Tensor], env: _Env) -> Tensor:
        (x,) = args
        if not env.fake_quant:
            return x.mean(self.axes, keepdim=self.keep_dims)
        # An exact integer sum, rescaled and rounded once: LiteRT's int8 MEAN over the spatial
        # axes (an image-pooling branch) to the bit.
        count = math.prod(x.shape[a] for a in self.axes)
        total = self.inp.to_int(x).sum(self.axes, keepdim=self.keep_dims)
        return self.out.requantize(total * (self.inp.scale / (self.out.scale * count)))


class _Pad(_Op):
    def __init__(self, node: _Node, pad: tuple[int, ...]) -> None:
        super().__init__(node, node.inputs[:1])
        self.pad = pad  # F.pad order: last torch axis first

    def forward(self, args: list[Tensor], env: _Env) -> Tensor:
        # TFLite pads quantized tensors with their zero point: real 0, on the grid in fake-quant.
        return F.pad(args[0], self.pad)


class _ArgMax(_Op):
    def __init__(self, node: _Node, axis: int) -> None:
        super().__init__(node, node.inputs[:1])
        self.axis = axis

    def forward(self, args: list[Tensor], env: _Env) -> Tensor:
        (x,) = args
        return x.argmax(self.axis)


class _Graph:
    """Read access to subgraph 0 of a parsed model, for the op builders."""

    def __init__(self, model: schema.ModelT, data: bytes) -> None:
        self._model = model
        self._data = data
        subgraph = model.subgraphs[0]
        self.tensors = subgraph.tensors
        self.inputs = [int(i) for i in subgraph.inputs]
        self.outputs = [int(i) for i in subgraph.outputs]
        self.nodes = [self._node(i, op) for i, op in enumerate(subgraph.operators)]
        self.produced: list[int] = list(self.inputs)  # tensors in the order they come to exist
        self._constants: dict[int, QuantizedConstant] = {}

    def _node(self, index: int, op: schema.OperatorT) -> _Node:
        code = self._model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.customCode
            name = custom.decode() if isinstance(custom, bytes) else str(custom)
        inputs = tuple(int(i) for i in op.inputs) if op.inputs is not None else ()
        outputs = tuple(int(i) for i in op.outputs) if op.outputs is not None else ()
        return _Node(index, name, inputs, outputs, op.builtinOptions)

    def shape(self, index: int) -> tuple[int, ...]:
        shape = self.tensors[index].shape
        return () if shape is None else tuple(int(d) for d in shape)

    def spatial(self, index: int) -> tuple[int, int] | None:
        shape = self.shape(index)
        return (shape[1], shape[2]) if len(shape) == 4 else None

    def name(self, index: int) -> str:
        name = self.tensors[index].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def _buffer(self, index: int) -> tuple[int, bytes]:
        tensor = self.tensors[index]
        buffer = self._model.buffers[tensor.buffer]
        if buffer.offset > 1:  # large models keep buffers after the flatbuffer itself
            raw = self._data[buffer.offset : buffer.offset + buffer.size]
        elif buffer.data is not None:
            raw = np.asarray(buffer.data, dtype=np.uint8).tobytes()
        else:
            raw = b""
        if not raw:
            raise ValueError(f"tensor {index} ({self.name(index)}) is a constant without data")
        return int(tensor.buffer), raw

    def int_values(self, index: int) -> np.ndarray:
        """A constant integer operand, such as a resize size or an axis."""
        dtype = _INDEX_TYPES.get(self.tensors[index].type)
        if dtype is None:
            raise ValueError(f"tensor {index} ({self.name(index)}) is not an int32/int64 constant")
        return np.frombuffer(self._buffer(index)[1], dtype).astype(np.int64)

    def act_quant(
        self, index: int, activation: int = schema.ActivationFunctionType.NONE
    ) -> _ActQuant:
        tensor = self.tensors[index]
        quant = tensor.quantization
        if (
            tensor.type not in _ACTIVATION_TYPES
            or quant is None
            or quant.scale is None
            or len(quant.scale) != 1
        ):
            raise ValueError(
                f"tensor {index} ({self.name(index)}) is not a per-tensor uint8/int8 quantized"
                " activation; only fully quantized models can be imported"
            )
        scale = float(np.float32(quant.scale[0]))
        zero_point = int(quant.zeroPoint[0]) if quant.zeroPoint is not None else 0
        info = np.iinfo(_STORAGE_DTYPES[tensor.type])
        low, high = _ACTIVATION_BOUNDS[activation]

        def to_q(value: float) -> int:
            # TFLite's CalculateActivationRangeQuantized, in float32 with std::round
            v = float(np.float32(value) / np.float32(scale))
            return zero_point + int(math.copysign(math.floor(abs(v) + 0.5), v))

        qmin = info.min if low is None else max(info.min, to_q(low))
        qmax = info.max if high is None else min(info.max, to_q(high))
        return _ActQuant(scale, zero_point, qmin, qmax)

    def constant(self, index: int, permutation: tuple[int, ...]) -> QuantizedConstant:
        """The trainable constant for a tensor; a tensor read by several ops is one parameter."""
        if index in self._constants:
            return self._constants[index]
        tensor = self.tensors[index]
        quant = tensor.quantization
        dtype = _STORAGE_DTYPES.get(tensor.type)
        if dtype is None or quant is None or quant.scale is None or len(quant.scale) == 0:
            raise ValueError(
                f"tensor {index} ({self.name(index)}) is not an int8/uint8/int32 quantized constant"
            )
        buffer_index, raw = self._buffer(index)
        shape = self.shape(index)
        scales = tuple(float(s) for s in np.asarray(quant.scale, np.float32))
        zero_points = quant.zeroPoint if quant.zeroPoint is not None else [0] * len(scales)
        spec = ConstantSpec(
            tensor_index=index,
            buffer_index=buffer_index,
            name=self.name(index),
            dtype=dtype,
            shape=shape,
            quant=QuantParams(scales, tuple(int(z) for z in zero_points), quant.quantizedDimension),
            permutation=permutation,
        )
        constant = QuantizedConstant(spec, np.frombuffer(raw, dtype).reshape(shape))
        self._constants[index] = constant
        return constant

    def channel_axis(self, node: _Node, axis: int) -> int:
        """An NHWC axis operand of `node`, as the axis of the NCHW torch tensor."""
        rank = len(self.shape(node.inputs[0]))
        axis %= rank
        return _NHWC_TO_NCHW_AXIS[axis] if rank == 4 else axis


def _build_conv_2d(graph: _Graph, node: _Node) -> _Op:
    weight = graph.constant(node.inputs[1], _CONV_WEIGHT_TO_TORCH)
    groups = graph.shape(node.inputs[0])[3] // weight.spec.shape[3]
    inp = graph.act_quant(node.inputs[0])
    return _Conv(node, weight, _bias(graph, node), groups, inp, _out_quant(graph, node))


def _build_depthwise_conv_2d(graph: _Graph, node: _Node) -> _Op:
    weight = graph.constant(node.inputs[1], _DEPTHWISE_WEIGHT_TO_TORCH)
    groups = graph.shape(node.inputs[0])[3]
    inp = graph.act_quant(node.inputs[0])
    return _Conv(node, weight, _bias(graph, node), groups, inp, _out_quant(graph, node))


def _bias(graph: _Graph, node: _Node) -> QuantizedConstant | None:
    if len(node.inputs) < 3 or node.inputs[2] < 0:
        return None
    return graph.constant(node.inputs[2], _BIAS_TO_TORCH)


def _out_quant(graph: _Graph, node: _Node) -> _ActQuant:
    none = schema.ActivationFunctionType.NONE
    activation = getattr(node.options, "fusedActivationFunction", none)
    if activation not in _FLOAT_ACTIVATIONS:
        fused = _ACTIVATION_NAMES.get(activation, str(activation))
        raise UnsupportedOpsError([f"{node.name} with fused {fused}"])
    return graph.act_quant(node.outputs[0], activation)


def _build_add(graph: _Graph, node: _Node) -> _Op:
    a, b = (graph.act_quant(t) for t in node.inputs)
    return _Add(node, a, b, _out_quant(graph, node))


def _build_average_pool_2d(graph: _Graph, node: _Node) -> _Op:
    options = node.options
    whole_input = graph.spatial(node.inputs[0]) == (options.filterHeight, options.filterWidth)
    whole_input = whole_input and graph.spatial(node.outputs[0]) == (1, 1)
    inp = graph.act_quant(node.inputs[0])
    return _AveragePool(node, whole_input, inp, _out_quant(graph, node))


def _build_resize_bilinear(graph: _Graph, node: _Node) -> _Op:
    height, width = (int(v) for v in graph.int_values(node.inputs[1]))
    # The latest tensor of that size is the one this resize lines its output up with: the model
    # input for the final upsampling, the feature map an image-pooling branch is concatenated to.
    size_of = next(
        (t for t in reversed(graph.produced) if graph.spatial(t) == (height, width)), None
    )
    inp = graph.act_quant(node.inputs[0])
    return _ResizeBilinear(node, (height, width), size_of, inp, graph.act_quant(node.outputs[0]))


def _build_concatenation(graph: _Graph, node: _Node) -> _Op:
    axis = graph.channel_axis(node, node.options.axis)
    return _Concatenation(node, axis, _out_quant(graph, node))


def _build_quantize(graph: _Graph, node: _Node) -> _Op:
    return _Quantize(node, graph.act_quant(node.inputs[0]), graph.act_quant(node.outputs[0]))


def _build_arg_max(graph: _Graph, node: _Node) -> _Op:
    (axis,) = graph.int_values(node.inputs[1])
    return _ArgMax(node, graph.channel_axis(node, int(axis)))


def _build_mean(graph: _Graph, node: _Node) -> _Op:
    axes = tuple(sorted(graph.channel_axis(node, int(a)) for a in graph.int_values(node.inputs[1])))
    inp = graph.act_quant(node.inputs[0])
    return _Mean(node, axes, inp, graph.act_quant(node.outputs[0]))


def _build_pad(graph: _Graph, node: _Node) -> _Op:
    before_after = graph.int_values(node.inputs[1]).reshape(-1, 2)  # per TFLite axis
    rank = len(before_after)
    if graph.act_quant(node.inputs[0]) != graph.act_quant(node.outputs[0]):
        raise UnsupportedOpsError(["PAD with different input and output quantization"])
    torch_axes = [graph.channel_axis(node, axis) for axis in range(rank)]
    by_torch_axis = dict(zip(torch_axes, before_after.tolist(), strict=True))
    pad = [int(v) for axis in reversed(range(rank)) for v in by_torch_axis[axis]]
    return _Pad(node, tuple(pad))


_BUILDERS: dict[str, Callable[[_Graph, _Node], _Op]] = {
    "CONV_2D": _build_conv_2d,
    "DEPTHWISE_CONV_2D": _build_depthwise_conv_2d,
    "ADD": _build_add,
    "AVERAGE_POOL_2D": _build_average_pool_2d,
    "RESIZE_BILINEAR": _build_resize_bilinear,
    "CONCATENATION": _build_concatenation,
    "QUANTIZE": _build_quantize,
    "ARG_MAX": _build_arg_max,
    "MEAN": _build_mean,
    "PAD": _build_pad,
}


class TFLiteStudent(nn.Module):
    """A TFLite graph rebuilt in torch; see the module docstring.

    `fake_quant` (default True) emulates the integer kernels at the file's frozen scales;
    False runs the same graph in plain float. Parameters are in graph order (first layers first),
    each layer's weight before its bias.
    """

    def __init__(
        self,
        ops: Sequence[_Op],
        input_index: int,
        input_shape: tuple[int, int, int],
        input_quant: _ActQuant,
        input_dtype: torch.dtype,
        logits_index: int,
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.input_index = input_index
        self.input_shape = input_shape  # H, W, C of the file's input tensor
        self.input_quant = input_quant
        self.input_dtype = input_dtype
        self.logits_index = logits_index
        self.fake_quant = True
        last_use = {t: position for position, op in enumerate(ops) for t in op.inputs}
        last_use.pop(logits_index, None)
        self._release: list[list[int]] = [[] for _ in ops]
        for tensor, position in last_use.items():
            self._release[position].append(tensor)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def constants(self) -> Iterator[QuantizedConstant]:
        """Every weight and bias tensor, in graph order."""
        return (m for m in self.modules() if isinstance(m, QuantizedConstant))

    def _prepare_input(self, x: Tensor | np.ndarray) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 4 or x.shape[3] != self.input_shape[2]:
            raise ValueError(
                f"expected an NHWC batch (N, H, W, {self.input_shape[2]}), got {tuple(x.shape)}"
            )
        device = next(self.parameters()).device
        x = x.to(device).permute(0, 3, 1, 2)
        if x.dtype == self.input_dtype:
            x = self.input_quant.from_grid(x.float())
        elif not x.is_floating_point():
            raise TypeError(f"input must be {self.input_dtype} or floating point, got {x.dtype}")
        return self.input_quant.fake(x) if self.fake_quant else x

    def forward(self, x: Tensor | np.ndarray) -> Tensor:
        """Logits (N, C, H, W) for an NHWC batch.

        x: integers of the model's input dtype (e.g. uint8 pixels, quantized at the input
        tensor's scale and zero point), or floats already in the real-valued domain of the input
        tensor, i.e. scale * (pixel - zero_point), such as [-1, 1) for the Coral DeepLab models.
        """
        env = _Env(self.fake_quant)
        table = {self.input_index: self._prepare_input(x)}
        env.sizes[self.input_index] = tuple(table[self.input_index].shape[2:])
        for op, release in zip(self.ops, self._release, strict=True):
            y = op([table[t] for t in op.inputs], env)
            table[op.output] = y
            if y.ndim == 4:
                env.sizes[op.output] = (y.shape[2], y.shape[3])
            for t in release:
                del table[t]
        return table[self.logits_index]

    @torch.no_grad()
    def labels(self, x: Tensor | np.ndarray) -> Tensor:
        """Per-pixel class labels (N, H, W), int64, like the file's ARG_MAX output."""
        return self(x).argmax(1)


def import_tflite(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> TFLiteStudent:
    """Rebuild a quantized TFLite model (a path or the flatbuffer bytes) as a TFLiteStudent.

    Raises UnsupportedOpsError listing every op the importer cannot rebuild, and ValueError for
    anything else it cannot represent (float tensors, several inputs, ...).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        data = Path(source).read_bytes()
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise ValueError("not a TFLite flatbuffer (no TFL3 file identifier)")
    graph = _Graph(schema.ModelT.InitFromPackedBuf(data, 0), data)

    unsupported = dict.fromkeys(n.name for n in graph.nodes if n.name not in _BUILDERS)
    if unsupported:
        raise UnsupportedOpsError(list(unsupported))
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError("only models with one input and one output can be imported")
    (input_index,) = graph.inputs
    (output_index,) = graph.outputs
    input_shape = graph.shape(input_index)
    if len(input_shape) != 4:
        raise ValueError(f"the model input must be an NHWC image batch, got shape {input_shape}")

    nodes = graph.nodes
    logits_index = output_index
    # Training needs the scores, so a final ARG_MAX over channels stays out of the module.
    if nodes and nodes[-1].name == "ARG_MAX" and nodes[-1].outputs == (output_index,):
        axis = int(graph.int_values(nodes[-1].inputs[1])[0])
        if axis % len(graph.shape(nodes[-1].inputs[0])) == 3:
            logits_index = nodes[-1].inputs[0]
            nodes = nodes[:-1]

    ops = []
    for node in nodes:
        op = _BUILDERS[node.name](graph, node)
        missing = [t for t in op.inputs if t not in graph.produced]
        if missing:
            raise ValueError(
                f"op {node.index} ({node.name}) reads tensors {missing} that no earlier op"
                " produces; constant operands are supported only as weights and biases"
            )
        graph.produced.extend(node.outputs)
        ops.append(op)

    input_tensor = graph.tensors[input_index]
    input_dtype = torch.from_numpy(np.zeros(0, _STORAGE_DTYPES[input_tensor.type])).dtype
    return TFLiteStudent(
        ops,
        input_index,
        (input_shape[1], input_shape[2], input_shape[3]),
        graph.act_quant(input_index),
        input_dtype,
        logits_index,
    )


def quantized_weights(student: TFLiteStudent) -> dict[int, np.ndarray]:
    """Every weight and bias written back at its frozen scale, keyed by TFLite tensor index.

    Arrays have the file's storage dtype and TFLite layout, so `arr.tobytes()` is the content of
    the tensor's buffer; unchanged master weights give back the original bytes exactly.
    """
    return {c.spec.tensor_index: c.stored() for c in student.constants()}


def tensor_buffer_indices(student: TFLiteStudent) -> dict[int, int]:
    """Flatbuffer buffer index of every weight and bias tensor, keyed by TFLite tensor index."""
    return {c.spec.tensor_index: c.spec.buffer_index for c in student.constants()}
