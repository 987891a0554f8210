"""One builder per supported TFLite op: reads the op's operands from the graph and makes its
torch module, refusing the variants the importer cannot emulate."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ai_edge_litert import schema_py_generated as schema

from cloud_trainer.student.tflite.graph import Graph
from cloud_trainer.student.tflite.ops import (
    Add,
    ArgMax,
    AveragePool,
    Concatenation,
    Conv,
    Mean,
    Node,
    Op,
    Pad,
    Quantize,
)
from cloud_trainer.student.tflite.quantization import ActQuant, QuantizedConstant
from cloud_trainer.student.tflite.resize import ResizeBilinear
from cloud_trainer.student.tflite.tables import (
    ACTIVATION_NAMES,
    BIAS_TO_TORCH,
    CONV_WEIGHT_TO_TORCH,
    DEPTHWISE_WEIGHT_TO_TORCH,
    FLOAT_ACTIVATIONS,
)


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


def _build_conv_2d(graph: Graph, node: Node) -> Op:
    weight = graph.constant(node.inputs[1], CONV_WEIGHT_TO_TORCH)
    groups = graph.shape(node.inputs[0])[3] // weight.spec.shape[3]
    inp = graph.act_quant(node.inputs[0])
    return Conv(node, weight, _bias(graph, node), groups, inp, _out_quant(graph, node))


def _build_depthwise_conv_2d(graph: Graph, node: Node) -> Op:
    weight = graph.constant(node.inputs[1], DEPTHWISE_WEIGHT_TO_TORCH)
    groups = graph.shape(node.inputs[0])[3]
    inp = graph.act_quant(node.inputs[0])
    return Conv(node, weight, _bias(graph, node), groups, inp, _out_quant(graph, node))


def _bias(graph: Graph, node: Node) -> QuantizedConstant | None:
    if len(node.inputs) < 3 or node.inputs[2] < 0:
        return None
    return graph.constant(node.inputs[2], BIAS_TO_TORCH)


def _out_quant(graph: Graph, node: Node) -> ActQuant:
    none = schema.ActivationFunctionType.NONE
    activation = getattr(node.options, "fusedActivationFunction", none)
    if activation not in FLOAT_ACTIVATIONS:
        fused = ACTIVATION_NAMES.get(activation, str(activation))
        raise UnsupportedOpsError([f"{node.name} with fused {fused}"])
    return graph.act_quant(node.outputs[0], activation)


def _build_add(graph: Graph, node: Node) -> Op:
    a, b = (graph.act_quant(t) for t in node.inputs)
    return Add(node, a, b, _out_quant(graph, node))


def _build_average_pool_2d(graph: Graph, node: Node) -> Op:
    options = node.options
    whole_input = graph.spatial(node.inputs[0]) == (options.filterHeight, options.filterWidth)
    whole_input = whole_input and graph.spatial(node.outputs[0]) == (1, 1)
    inp = graph.act_quant(node.inputs[0])
    return AveragePool(node, whole_input, inp, _out_quant(graph, node))


def _build_resize_bilinear(graph: Graph, node: Node) -> Op:
    height, width = (int(v) for v in graph.int_values(node.inputs[1]))
    # The latest tensor of that size is the one this resize lines its output up with: the model
    # input for the final upsampling, the feature map an image-pooling branch is concatenated to.
    size_of = next(
        (t for t in reversed(graph.produced) if graph.spatial(t) == (height, width)), None
    )
    inp = graph.act_quant(node.inputs[0])
    return ResizeBilinear(node, (height, width), size_of, inp, graph.act_quant(node.outputs[0]))


def _build_concatenation(graph: Graph, node: Node) -> Op:
    axis = graph.channel_axis(node, node.options.axis)
    grids = [graph.act_quant(t) for t in node.inputs]
    return Concatenation(node, axis, grids, _out_quant(graph, node))


def _build_quantize(graph: Graph, node: Node) -> Op:
    return Quantize(node, graph.act_quant(node.inputs[0]), graph.act_quant(node.outputs[0]))


def _build_arg_max(graph: Graph, node: Node) -> Op:
    (axis,) = graph.int_values(node.inputs[1])
    return ArgMax(node, graph.channel_axis(node, int(axis)))


def _build_mean(graph: Graph, node: Node) -> Op:
    axes = tuple(sorted(graph.channel_axis(node, int(a)) for a in graph.int_values(node.inputs[1])))
    inp = graph.act_quant(node.inputs[0])
    return Mean(node, axes, inp, graph.act_quant(node.outputs[0]))


def _build_pad(graph: Graph, node: Node) -> Op:
    before_after = graph.int_values(node.inputs[1]).reshape(-1, 2)  # per TFLite axis
    rank = len(before_after)
    grid = graph.act_quant(node.inputs[0])
    if grid != graph.act_quant(node.outputs[0]):
        raise UnsupportedOpsError(["PAD with different input and output quantization"])
    torch_axes = [graph.channel_axis(node, axis) for axis in range(rank)]
    by_torch_axis = dict(zip(torch_axes, before_after.tolist(), strict=True))
    pad = [int(v) for axis in reversed(range(rank)) for v in by_torch_axis[axis]]
    return Pad(node, tuple(pad), grid)


BUILDERS: dict[str, Callable[[Graph, Node], Op]] = {
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
