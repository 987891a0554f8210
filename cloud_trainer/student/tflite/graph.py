"""Read access to subgraph 0 of a model, for the op builders: its ops, the declared shapes and
grids of its tensors, and its constants, all read through `shared_schema.tflite_file`."""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from cloud_trainer.student.tflite.ops import Node
from cloud_trainer.student.tflite.quantization import ActQuant, ConstantSpec, QuantizedConstant
from cloud_trainer.student.tflite.tables import NHWC_TO_NCHW_AXIS, OP_NAMES
from shared_schema.tflite_file import Operator, TFLiteFile

# The dtypes a constant operand such as a size or an axis may have.
_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


class Graph:
    def __init__(self, file: TFLiteFile) -> None:
        self.file = file
        self.inputs = list(file.inputs)
        self.outputs = list(file.outputs)
        self.nodes = [self._node(op) for op in file.operators]
        self.produced: list[int] = list(self.inputs)  # tensors in the order they come to exist
        self._constants: dict[int, QuantizedConstant] = {}

    def _node(self, op: Operator) -> Node:
        if op.code == schema.BuiltinOperator.CUSTOM:
            name = op.custom_code
        else:
            name = OP_NAMES.get(op.code, f"BUILTIN_{op.code}")
        return Node(op.index, name, op.inputs, op.outputs, self.file.builtin_options(op))

    def shape(self, index: int) -> tuple[int, ...]:
        return self.file.tensor(index).shape

    def spatial(self, index: int) -> tuple[int, int] | None:
        shape = self.shape(index)
        return (shape[1], shape[2]) if len(shape) == 4 else None

    def int_values(self, index: int) -> np.ndarray:
        """A constant integer operand, such as a resize size or an axis, flat."""
        tensor = self.file.tensor(index)
        if tensor.dtype not in _INDEX_DTYPES:
            raise ValueError(f"tensor {index} ({tensor.name}) is not an int32/int64 constant")
        return self.file.tensor_values(index).astype(np.int64).ravel()

    def act_quant(
        self, index: int, activation: int = schema.ActivationFunctionType.NONE
    ) -> ActQuant:
        return ActQuant.of(self.file.tensor(index), activation)

    def constant(self, index: int, permutation: tuple[int, ...]) -> QuantizedConstant:
        """The trainable constant for a tensor; a tensor read by several ops is one parameter."""
        if index in self._constants:
            return self._constants[index]
        tensor = self.file.by_index.get(index)
        if tensor is None:
            name = self.file.tensor(index).name
            raise ValueError(
                f"tensor {index} ({name}) is not an int8/uint8/int32 quantized constant"
            )
        stored = self.file.values(tensor).reshape(tensor.shape)
        constant = QuantizedConstant(ConstantSpec.of(tensor, permutation), stored)
        self._constants[index] = constant
        return constant

    def channel_axis(self, node: Node, axis: int) -> int:
        """An NHWC axis operand of `node`, as the axis of the NCHW torch tensor."""
        rank = len(self.shape(node.inputs[0]))
        axis %= rank
        return NHWC_TO_NCHW_AXIS[axis] if rank == 4 else axis
