"""Read and patch the constant tensors of a .tflite flatbuffer, without a converter.

Model updates change the *values* of weight and bias tensors, never their number, type or the
graph, so a new model is the old file with some bytes of some buffers overwritten. The trainable
constants are quantized (int8, uint8, int32 at frozen scales) or, in a float model, float16
constants that a DEQUANTIZE op turns into the float32 operand (TFLite's float16 form). Both the
trainer (on its mirror of a device's model) and the device (on its standby slot) patch through
this module, which is what makes the two files bit-identical.

Whatever else reads a model's graph (the trainer's TFLite importer, a model's geometry) reads it
here too, so that one table says how each tensor type is stored and one rule says where a
buffer's bytes are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from ai_edge_litert import schema_py_generated as schema

# Storage dtypes of the tensor types read here; flatbuffers are little-endian whatever the host.
FLOAT16 = np.dtype("<f2")
_DTYPES = {
    schema.TensorType.UINT8: np.dtype("<u1"),
    schema.TensorType.INT8: np.dtype("<i1"),
    schema.TensorType.INT16: np.dtype("<i2"),
    schema.TensorType.INT32: np.dtype("<i4"),
    schema.TensorType.INT64: np.dtype("<i8"),
    schema.TensorType.FLOAT16: FLOAT16,
}
# What the constants updates patch are stored in: quantized weights and biases of up to 32 bits
# (int64 constants are shapes and axes here), or float16 values.
_QUANTIZED_DTYPES = frozenset(d for d in _DTYPES.values() if d.kind in "iu" and d.itemsize <= 4)
# The integer of the same width as each storage dtype: the words qdelta takes differences of.
_WORDS = {d: d if d.kind in "iu" else np.dtype(f"<u{d.itemsize}") for d in _DTYPES.values()}
# The ops whose filter (input 1) and bias (input 2) are the trainable constants.
_TRAINABLE_OPS = {
    schema.BuiltinOperator.CONV_2D,
    schema.BuiltinOperator.DEPTHWISE_CONV_2D,
    schema.BuiltinOperator.FULLY_CONNECTED,
    schema.BuiltinOperator.TRANSPOSE_CONV,
}
_BUFFER_DATA_FIELD = 4  # vtable offset of Buffer.data


def nearest_float16(x: np.ndarray) -> np.ndarray:
    """The nearest finite float16 of each value: beyond its range, the largest one."""
    limit = np.finfo(FLOAT16).max
    return np.clip(x, -limit, limit).astype(FLOAT16)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Halves away from zero (std::round): how TFLite's quantizer rounds constants and the
    bounds of fused activations."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


class TFLiteFormatError(ValueError):
    """Bytes that are not a quantized TFLite model this module can read or patch."""


@dataclass(frozen=True)
class TensorInfo:
    """What the file declares about one tensor of subgraph 0: an activation, input or constant."""

    index: int  # tensor index in subgraph 0: the id updates use
    name: str
    dtype: np.dtype | None  # storage dtype; None for the types read nowhere (float32, strings)
    shape: tuple[int, ...]
    scale: np.ndarray  # float32, one per tensor or one per channel; empty when not quantized
    zero_point: np.ndarray  # int64, same length as scale
    quantized_dimension: int
    buffer: int  # index of its buffer in the model

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class ConstTensor(TensorInfo):
    """A quantized weight or bias, stored in the file (``dtype`` is never None)."""

    start: int  # byte offset of the values in the file

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def is_float(self) -> bool:
        """A float16 constant: it stores real values, on no grid."""
        return self.dtype == FLOAT16

    @property
    def word(self) -> np.dtype:
        """The integer dtype of the storage's width (the storage dtype itself for integers)."""
        return _WORDS[self.dtype]

    def quantize(self, real: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Real values at flat ``positions`` on this tensor's frozen grid, in its storage dtype
        (float16 constants: the nearest finite float16)."""
        if self.is_float:
            return nearest_float16(real)
        channel = self._channel_of(positions)
        q = round_half_away(real / self.scale[channel])
        info = np.iinfo(self.dtype)
        return np.clip(q + self.zero_point[channel], info.min, info.max).astype(self.dtype)

    def dequantize(self, stored: np.ndarray) -> np.ndarray:
        """The real values (float64) of this tensor's stored values, flat."""
        stored = np.asarray(stored).ravel()
        if self.is_float:
            return stored.astype(np.float64)
        channel = self._channel_of(np.arange(stored.size))
        return (stored.astype(np.float64) - self.zero_point[channel]) * self.scale[channel]

    def _channel_of(self, positions: np.ndarray) -> np.ndarray:
        if self.scale.size == 1:
            return np.zeros(positions.shape, np.int64)
        inner = int(np.prod(self.shape[self.quantized_dimension + 1 :], dtype=np.int64))
        return (positions // inner) % self.shape[self.quantized_dimension]


@dataclass(frozen=True)
class Operator:
    """One op of a subgraph (subgraph 0 unless said)."""

    index: int  # position in its subgraph's execution order
    code: int  # schema.BuiltinOperator (CUSTOM for a custom op)
    custom_code: str  # a custom op's name; "" for builtins
    inputs: tuple[int, ...]  # tensor indices; -1 for an optional input left out
    outputs: tuple[int, ...]
    subgraph: int = 0


@dataclass(frozen=True)
class Signature:
    """A named entry point of the model: a subgraph and its named input and output tensors."""

    key: str
    subgraph: int
    inputs: dict[str, int]  # name -> tensor index in that subgraph
    outputs: dict[str, int]


class TFLiteFile:
    """One model file: its bytes, where each trainable constant lives in them, and read access
    to its graph (ops, tensors, constants, geometry).

    Subgraph 0 is the model; further subgraphs (an elastic model's sub-networks, reached through
    signatures) may read its constants too, and then they must name each one by the tensor index
    subgraph 0 gives it, on the same buffer: so a tensor index is one weight in every subgraph,
    and one patch of its bytes changes every subgraph that reads it.
    """

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        try:
            if len(self.data) < 8 or self.data[4:8] != b"TFL3":
                raise TFLiteFormatError("not a TFLite flatbuffer (no TFL3 identifier)")
            self._model = schema.Model.GetRootAs(self.data, 0)
            if self._model.SubgraphsLength() < 1:
                raise TFLiteFormatError("model has no subgraph")
            self._trainable = self._find_trainable()
        except TFLiteFormatError:
            raise
        except Exception as exc:  # flatbuffers raises anything from IndexError to struct.error
            raise TFLiteFormatError(f"malformed TFLite flatbuffer: {exc}") from exc

    def with_data(self, data: bytes) -> TFLiteFile:
        """The same layout holding other values, without parsing again: what a value update
        (qdelta, ams-fp16) produces, since it rewrites values in place."""
        if len(data) != len(self.data) or data[4:8] != b"TFL3":
            raise TFLiteFormatError("not a file of this layout")
        clone = object.__new__(TFLiteFile)
        clone.data = bytes(data)
        clone._model = schema.Model.GetRootAs(clone.data, 0)
        clone._trainable = self._trainable
        return clone

    @property
    def trainable(self) -> tuple[ConstTensor, ...]:
        """Weights and biases of conv / fully connected ops, in graph order, each once."""
        return self._trainable

    @cached_property
    def by_index(self) -> dict[int, ConstTensor]:
        return {t.index: t for t in self._trainable}

    @property
    def trainable_size(self) -> int:
        return sum(t.size for t in self._trainable)

    def values(self, tensor: ConstTensor) -> np.ndarray:
        """The stored values of one tensor, flat, read-only."""
        return np.frombuffer(self.data, tensor.dtype, tensor.size, tensor.start)

    def patched(self, new_values: dict[int, np.ndarray]) -> bytes:
        """A copy of the file with whole tensors replaced (flat arrays in storage dtype)."""
        out = bytearray(self.data)
        for index, values in new_values.items():
            tensor = self.by_index.get(index)
            if tensor is None:
                raise TFLiteFormatError(f"tensor {index} is not a trainable constant")
            values = np.ascontiguousarray(values, dtype=tensor.dtype).ravel()
            if values.size != tensor.size:
                raise TFLiteFormatError(
                    f"tensor {index} has {tensor.size} values, update gives {values.size}"
                )
            if tensor.is_float and not np.isfinite(values).all():
                raise TFLiteFormatError(f"tensor {index} would hold non-finite values")
            out[tensor.start : tensor.start + tensor.nbytes] = values.tobytes()
        return bytes(out)

    # -- the graph, read-only ------------------------------------------------------------------

    @property
    def inputs(self) -> tuple[int, ...]:
        """Tensor indices of the model's inputs."""
        graph = self._graph
        return tuple(int(graph.Inputs(i)) for i in range(graph.InputsLength()))

    @property
    def outputs(self) -> tuple[int, ...]:
        """Tensor indices of the model's outputs."""
        graph = self._graph
        return tuple(int(graph.Outputs(i)) for i in range(graph.OutputsLength()))

    @cached_property
    def operators(self) -> tuple[Operator, ...]:
        """The ops of subgraph 0, in execution order."""
        return self.operators_of(0)

    @property
    def subgraph_count(self) -> int:
        return int(self._model.SubgraphsLength())

    def operators_of(self, subgraph: int) -> tuple[Operator, ...]:
        """The ops of one subgraph, in execution order."""
        graph = self._subgraph(subgraph)
        return tuple(self._operator(graph, i, subgraph) for i in range(graph.OperatorsLength()))

    @cached_property
    def signatures(self) -> dict[str, Signature]:
        """The model's signatures by key (none in a plain single-graph model)."""
        out = {}
        for i in range(self._model.SignatureDefsLength()):
            raw = self._model.SignatureDefs(i)
            key = raw.SignatureKey().decode(errors="replace")
            subgraph = int(raw.SubgraphIndex())
            self._subgraph(subgraph)
            inputs = _tensor_maps(raw.Inputs, raw.InputsLength())
            out[key] = Signature(
                key, subgraph, inputs, _tensor_maps(raw.Outputs, raw.OutputsLength())
            )
        return out

    def metadata(self, name: str) -> bytes | None:
        """The bytes of the model's metadata entry `name` (TFLite ``Model.metadata``), if any."""
        span = self._metadata_span(name)
        return None if span is None else self.data[span[0] : span[0] + span[1]]

    def with_metadata(self, name: str, payload: bytes) -> bytes:
        """The file with metadata entry `name` rewritten in place, `payload` padded with spaces
        to the entry's length: every other byte stays where it was, so value updates (qdelta)
        still apply. TFLiteFormatError where the entry is missing or `payload` is longer."""
        span = self._metadata_span(name)
        if span is None:
            raise TFLiteFormatError(f"the model has no metadata {name} to rewrite")
        start, length = span
        if len(payload) > length:
            raise TFLiteFormatError(f"metadata {name} holds {length} bytes, not {len(payload)}")
        return self.data[:start] + payload.ljust(length) + self.data[start + length :]

    def _metadata_span(self, name: str) -> tuple[int, int] | None:
        for i in range(self._model.MetadataLength()):
            entry = self._model.Metadata(i)
            if entry.Name() is not None and entry.Name().decode(errors="replace") == name:
                if not 0 <= entry.Buffer() < self._model.BuffersLength():
                    raise TFLiteFormatError(f"metadata {name} names no buffer of the model")
                start, length = self._buffer_span(int(entry.Buffer()))
                if start + length > len(self.data):
                    raise TFLiteFormatError(f"metadata {name} runs past the end of the file")
                return start, length
        return None

    def builtin_options(self, op: Operator) -> object | None:
        """The op's builtin options, unpacked (the schema's ``...OptionsT`` objects)."""
        raw = self._subgraph(op.subgraph).Operators(op.index)
        return schema.BuiltinOptionsCreator(raw.BuiltinOptionsType(), raw.BuiltinOptions())

    def tensor(self, index: int, subgraph: int = 0) -> TensorInfo:
        """What the file declares about any tensor of a subgraph (subgraph 0 unless said)."""
        graph = self._subgraph(subgraph)
        if not 0 <= index < graph.TensorsLength():
            raise TFLiteFormatError(f"no tensor {index} in subgraph {subgraph} of the model")
        tensor = graph.Tensors(index)
        scale, zero_point, dimension = _quantization(tensor.Quantization())
        return TensorInfo(
            index=index,
            name=tensor.Name().decode(errors="replace"),
            dtype=_DTYPES.get(tensor.Type()),
            shape=tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else (),
            scale=scale,
            zero_point=zero_point,
            quantized_dimension=dimension,
            buffer=int(tensor.Buffer()),
        )

    def tensor_values(self, index: int) -> np.ndarray:
        """The stored values of any integer constant (a weight, a resize's size, an axis), in
        its shape, read-only."""
        tensor = self.tensor(index)
        start, length = (0, 0) if tensor.dtype is None else self._data_span(tensor)
        if length == 0:
            raise TFLiteFormatError(
                f"tensor {index} ({tensor.name}) is not an integer constant stored in the file"
            )
        return np.frombuffer(self.data, tensor.dtype, tensor.size, start).reshape(tensor.shape)

    # -- geometry ------------------------------------------------------------------------------

    @cached_property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's image input (an NHWC batch, as TFLite lays images)."""
        shape = self.tensor(_only(self.inputs, "input")).shape
        if len(shape) != 4:
            raise TFLiteFormatError(f"the model input is not an NHWC image batch: {shape}")
        return shape[1], shape[2]

    @cached_property
    def num_classes(self) -> int:
        """How many classes the model scores: the channels of the scores its final ARG_MAX
        reads, or of its output where the graph ends with the scores themselves."""
        output = _only(self.outputs, "output")
        last = next((op for op in reversed(self.operators) if output in op.outputs), None)
        if last is not None and last.code == schema.BuiltinOperator.ARG_MAX:
            (axis,) = self.tensor_values(last.inputs[1]).ravel()
            return self.tensor(last.inputs[0]).shape[int(axis)]
        shape = self.tensor(output).shape
        if not shape:
            raise TFLiteFormatError("the model output is a scalar, not class scores")
        return shape[-1]

    # -- parsing -------------------------------------------------------------------------------

    @property
    def _graph(self) -> schema.SubGraph:
        return self._model.Subgraphs(0)

    def _subgraph(self, index: int) -> schema.SubGraph:
        if not 0 <= index < self._model.SubgraphsLength():
            raise TFLiteFormatError(f"the model has no subgraph {index}")
        return self._model.Subgraphs(index)

    def _operator(self, graph: schema.SubGraph, index: int, subgraph: int) -> Operator:
        op = graph.Operators(index)
        code = self._model.OperatorCodes(op.OpcodeIndex())
        custom = code.CustomCode()
        return Operator(
            index=index,
            # Older files fill only the deprecated byte; newer ones hold codes past 127 (the byte
            # then saying 127) in the newer field.
            code=max(code.BuiltinCode(), code.DeprecatedBuiltinCode()),
            custom_code=custom.decode(errors="replace") if custom else "",
            inputs=tuple(int(op.Inputs(i)) for i in range(op.InputsLength())),
            outputs=tuple(int(op.Outputs(i)) for i in range(op.OutputsLength())),
            subgraph=subgraph,
        )

    def _find_trainable(self) -> tuple[ConstTensor, ...]:
        seen: dict[int, ConstTensor] = {}
        for subgraph in range(self.subgraph_count):
            operators = self.operators_of(subgraph)
            # A float16 model's filters and biases reach their op through a DEQUANTIZE.
            dequantized = {
                op.outputs[0]: op.inputs[0]
                for op in operators
                if op.code == schema.BuiltinOperator.DEQUANTIZE and len(op.inputs) == 1
            }
            for op in operators:
                if op.code not in _TRAINABLE_OPS:
                    continue
                for operand in op.inputs[1:3]:
                    index = dequantized.get(operand, operand)
                    if index < 0:
                        continue
                    if self.tensor(index, subgraph).buffer != self.tensor(index).buffer:
                        raise TFLiteFormatError(
                            f"subgraph {subgraph} reads tensor {index} from another buffer than"
                            " subgraph 0: a weight must have one tensor index in every subgraph"
                        )
                    if index not in seen:
                        tensor = self._const_tensor(index)
                        if tensor is not None:
                            seen[tensor.index] = tensor
        return tuple(seen.values())

    def _const_tensor(self, index: int) -> ConstTensor | None:
        tensor = self.tensor(index)
        quantized = tensor.dtype in _QUANTIZED_DTYPES and tensor.scale.size > 0
        if not quantized and tensor.dtype != FLOAT16:
            return None  # float32 or unquantized integer constants are not patched
        start, length = self._data_span(tensor)
        if length == 0:
            return None  # a variable or an input, not a constant
        return ConstTensor(**vars(tensor), start=start)

    def _data_span(self, tensor: TensorInfo) -> tuple[int, int]:
        """(byte offset, length) of a tensor's values in the file; length 0 where it has none."""
        start, length = self._buffer_span(tensor.buffer)
        expected = tensor.size * tensor.dtype.itemsize
        if length and (length != expected or start + length > len(self.data)):
            raise TFLiteFormatError(f"tensor {tensor.index} buffer does not match its shape")
        return start, length

    def _buffer_span(self, buffer_index: int) -> tuple[int, int]:
        buffer = self._model.Buffers(buffer_index)
        if buffer.Offset() > 1:  # stored after the flatbuffer (models over 2 GB)
            return int(buffer.Offset()), int(buffer.Size())
        field = buffer._tab.Offset(_BUFFER_DATA_FIELD)
        if field == 0:
            return 0, 0
        return buffer._tab.Vector(field), buffer._tab.VectorLen(field)


def _tensor_maps(get: Callable[[int], schema.TensorMap], count: int) -> dict[str, int]:
    """A signature's named tensors: name -> tensor index."""
    maps = (get(i) for i in range(count))
    return {m.Name().decode(errors="replace"): int(m.TensorIndex()) for m in maps}


def _only(indices: tuple[int, ...], what: str) -> int:
    if len(indices) != 1:
        raise TFLiteFormatError(f"the model has {len(indices)} {what}s, not one")
    return indices[0]


def _quantization(
    quant: schema.QuantizationParameters | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scales (float32), zero points (int64, 0 where the file leaves them out) and the
    quantized dimension; no scales for a tensor that is not quantized."""
    if quant is None or quant.ScaleLength() == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64), 0
    scale = quant.ScaleAsNumpy().astype(np.float32)
    if quant.ZeroPointLength() == 0:
        return scale, np.zeros(scale.size, np.int64), quant.QuantizedDimension()
    return scale, quant.ZeroPointAsNumpy().astype(np.int64), quant.QuantizedDimension()
