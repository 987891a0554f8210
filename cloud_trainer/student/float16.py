"""A quantized student as a float TFLite model with float16 weights: what a device runs when the
trainer's ``[student] precision = "float16"`` (seed 002's float16 student, its updates fp16).

The graph is the quantized file's, in TFLite's own float16 form: every weight and bias is a
float16 constant holding its dequantized value, turned into the op's float32 operand by a
DEQUANTIZE at the start of the graph; activations are float32; the uint8 image input stays, and
a DEQUANTIZE turns it into floats as the file's input scale says. The trainable constants keep
their tensor indices, in the same graph order, so that an update addresses the same tensors in
either file. Requantizing ops (QUANTIZE from one grid to another) have no float meaning and go.
"""

from __future__ import annotations

from typing import Literal

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from shared_schema.tflite_file import TFLiteFile, nearest_float16

# What a device runs of a quantized student: the file at its integer grids, or its float16 form.
Precision = Literal["int8", "float16"]
_DEQUANTIZE_VERSION = 3  # the DEQUANTIZE kernel's version that reads float16 (and uint8, int8)


class Float16ConversionError(ValueError):
    """A quantized model this conversion cannot express in float."""


def for_precision(data: bytes, precision: Precision) -> bytes:
    """The file a device runs of the quantized student ``data``: itself (``int8``), or its
    float16 form."""
    return float16_model(data) if precision == "float16" else data


def float16_model(data: bytes) -> bytes:
    """The float16 form of the quantized model file ``data``."""
    file = TFLiteFile(data)
    model = schema.ModelT.InitFromPackedBuf(bytes(data), 0)
    graph = model.subgraphs[0]
    dequantize = _opcode(model, schema.BuiltinOperator.DEQUANTIZE)
    trainable = {t.index: t for t in file.trainable}
    replaced: dict[int, int] = {}  # a tensor index → the float32 tensor ops read instead
    head: list[schema.OperatorT] = []
    for index, const in trainable.items():
        tensor = graph.tensors[index]
        real = nearest_float16(const.dequantize(file.values(const)))
        model.buffers[tensor.buffer].data = np.frombuffer(real.tobytes(), np.uint8)
        replaced[index] = _append_float_tensor(graph, tensor, b"/dequantized")
        tensor.type, tensor.quantization = schema.TensorType.FLOAT16, None
        head.append(_op(dequantize, index, replaced[index]))
    (image,) = graph.inputs
    replaced[int(image)] = _append_float_tensor(graph, graph.tensors[image], b"/float")
    head.insert(0, _op(dequantize, int(image), replaced[int(image)]))
    body = _without_requantizing(model, graph, replaced)
    _activations_to_float(graph, skip={int(image), *trainable})
    for op in body:
        op.inputs = np.array([replaced.get(int(i), int(i)) for i in op.inputs], np.int32)
    graph.operators = head + body
    builder = flatbuffers.Builder(len(data) * 2)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _opcode(model: schema.ModelT, code: int) -> int:
    for i, opcode in enumerate(model.operatorCodes):
        if max(opcode.builtinCode, opcode.deprecatedBuiltinCode) == code:
            opcode.version = max(opcode.version, _DEQUANTIZE_VERSION)
            return i
    opcode = schema.OperatorCodeT()
    opcode.builtinCode = opcode.deprecatedBuiltinCode = code
    opcode.version = _DEQUANTIZE_VERSION
    model.operatorCodes.append(opcode)
    return len(model.operatorCodes) - 1


def _op(opcode: int, source: int, target: int) -> schema.OperatorT:
    op = schema.OperatorT()
    op.opcodeIndex = opcode
    op.inputs = np.array([source], np.int32)
    op.outputs = np.array([target], np.int32)
    return op


def _append_float_tensor(graph: schema.SubGraphT, like: schema.TensorT, suffix: bytes) -> int:
    """A new float32 activation tensor of ``like``'s shape; its index."""
    tensor = schema.TensorT()
    tensor.name = (like.name or b"") + suffix
    tensor.shape = np.array(like.shape, np.int32)
    tensor.type = schema.TensorType.FLOAT32
    tensor.buffer = 0  # TFLite's empty buffer: a tensor computed at run time
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _without_requantizing(
    model: schema.ModelT, graph: schema.SubGraphT, replaced: dict[int, int]
) -> list[schema.OperatorT]:
    """The graph's ops but its QUANTIZE ones (an identity in float), whose readers read the
    QUANTIZE's input instead."""
    kept = []
    outputs = {int(i) for i in graph.outputs}
    for op in graph.operators:
        opcode = model.operatorCodes[op.opcodeIndex]
        if max(opcode.builtinCode, opcode.deprecatedBuiltinCode) != schema.BuiltinOperator.QUANTIZE:
            kept.append(op)
            continue
        source, target = int(op.inputs[0]), int(op.outputs[0])
        if target in outputs:
            raise Float16ConversionError("the model's output is a QUANTIZE: nothing to float")
        replaced[target] = replaced.get(source, source)
    return kept


def _activations_to_float(graph: schema.SubGraphT, skip: set[int]) -> None:
    """Every quantized 8-bit activation becomes float32, off its grid."""
    for index, tensor in enumerate(graph.tensors):
        if index in skip or tensor.type not in (schema.TensorType.UINT8, schema.TensorType.INT8):
            continue
        tensor.type, tensor.quantization = schema.TensorType.FLOAT32, None
