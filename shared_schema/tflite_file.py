"""Read and patch the constant tensors of a quantized .tflite flatbuffer, without a converter.

Model updates change the *values* of weight and bias tensors, never their number, type or the
graph, so a new model is the old file with some bytes of some buffers overwritten. Both the
trainer (on its mirror of a device's model) and the device (on its standby slot) patch through
this module, which is what makes the two files bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from ai_edge_litert import schema_py_generated as schema

# Storage dtypes of quantized constants; flatbuffers are little-endian whatever the host.
_DTYPES = {
    schema.TensorType.UINT8: np.dtype("<u1"),
    schema.TensorType.INT8: np.dtype("<i1"),
    schema.TensorType.INT16: np.dtype("<i2"),
    schema.TensorType.INT32: np.dtype("<i4"),
}
# The ops whose filter (input 1) and bias (input 2) are the trainable constants.
_TRAINABLE_OPS = {
    schema.BuiltinOperator.CONV_2D,
    schema.BuiltinOperator.DEPTHWISE_CONV_2D,
    schema.BuiltinOperator.FULLY_CONNECTED,
    schema.BuiltinOperator.TRANSPOSE_CONV,
}
_BUFFER_DATA_FIELD = 4  # vtable offset of Buffer.data


class TFLiteFormatError(ValueError):
    """Bytes that are not a quantized TFLite model this module can patch."""


@dataclass(frozen=True)
class ConstTensor:
    index: int  # tensor index in subgraph 0: the id updates use
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # byte offset of the values in the file
    scale: np.ndarray  # float32, one per tensor or one per channel
    zero_point: np.ndarray  # int64, same length as scale
    quantized_dimension: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def quantize(self, real: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Real values at flat ``positions`` on this tensor's frozen grid, in its storage dtype
        (round half away from zero, as TFLite's own quantizer does)."""
        channel = self._channel_of(positions)
        q = np.sign(real) * np.floor(np.abs(real / self.scale[channel]) + 0.5)
        info = np.iinfo(self.dtype)
        return np.clip(q + self.zero_point[channel], info.min, info.max).astype(self.dtype)

    def _channel_of(self, positions: np.ndarray) -> np.ndarray:
        if self.scale.size == 1:
            return np.zeros(positions.shape, np.int64)
        inner = int(np.prod(self.shape[self.quantized_dimension + 1 :], dtype=np.int64))
        return (positions // inner) % self.shape[self.quantized_dimension]


class TFLiteFile:
    """One model file: its bytes and where each trainable constant lives in them."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        try:
            if len(self.data) < 8 or self.data[4:8] != b"TFL3":
                raise TFLiteFormatError("not a TFLite flatbuffer (no TFL3 identifier)")
            self._model = schema.Model.GetRootAs(self.data, 0)
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
            out[tensor.start : tensor.start + tensor.nbytes] = values.tobytes()
        return bytes(out)

    def _find_trainable(self) -> tuple[ConstTensor, ...]:
        model = self._model
        if model.SubgraphsLength() < 1:
            raise TFLiteFormatError("model has no subgraph")
        graph = model.Subgraphs(0)
        seen: dict[int, ConstTensor] = {}
        for op_index in range(graph.OperatorsLength()):
            op = graph.Operators(op_index)
            code = model.OperatorCodes(op.OpcodeIndex())
            if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) not in _TRAINABLE_OPS:
                continue
            for index in op.InputsAsNumpy()[1:3]:
                if index >= 0 and int(index) not in seen:
                    tensor = self._const_tensor(graph, int(index))
                    if tensor is not None:
                        seen[tensor.index] = tensor
        return tuple(seen.values())

    def _const_tensor(self, graph: schema.SubGraph, index: int) -> ConstTensor | None:
        tensor = graph.Tensors(index)
        dtype = _DTYPES.get(tensor.Type())
        quant = tensor.Quantization()
        if dtype is None or quant is None or quant.ScaleLength() == 0:
            return None  # float or unquantized constants are not patched as quantized values
        start, length = self._buffer_span(tensor.Buffer())
        shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
        result = ConstTensor(
            index=index,
            name=tensor.Name().decode(errors="replace"),
            dtype=dtype,
            shape=shape,
            start=start,
            scale=quant.ScaleAsNumpy().astype(np.float32),
            zero_point=(
                quant.ZeroPointAsNumpy().astype(np.int64)
                if quant.ZeroPointLength()
                else np.zeros(quant.ScaleLength(), np.int64)
            ),
            quantized_dimension=quant.QuantizedDimension(),
        )
        if length == 0:
            return None  # a variable or an input, not a constant
        if length != result.nbytes or start + length > len(self.data):
            raise TFLiteFormatError(f"tensor {index} buffer does not match its shape")
        return result

    def _buffer_span(self, buffer_index: int) -> tuple[int, int]:
        buffer = self._model.Buffers(buffer_index)
        if buffer.Offset() > 1:  # stored after the flatbuffer (models over 2 GB)
            return int(buffer.Offset()), int(buffer.Size())
        field = buffer._tab.Offset(_BUFFER_DATA_FIELD)
        if field == 0:
            return 0, 0
        return buffer._tab.Vector(field), buffer._tab.VectorLen(field)
