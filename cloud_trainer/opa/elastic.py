"""The elastic student's file: the device's student with its sub-networks as further subgraphs.

Sub-networks vary along two dimensions (issue 16): the input resolution, which the fully
convolutional DeepLab takes as is once its fixed-size ops (global pooling, resizes to a feature
map's size) are rewritten for it, and the depth, by skipping residual blocks (an ADD of a block's
input and the chain computed from it: without the chain the ADD's output is its input). Each
resolution has a pioneer (the first stages, up to the last residual block at
``pioneer_stride``), a head (one 1x1 convolution scoring the pioneer's features, the only new
weights) and one tail per depth. Every subgraph gets a copy of one tensor table (subgraph 0's
tensors, then the head's and the new size constants), its shapes at its resolution, so a tensor
index is one tensor in every subgraph and every weight has one buffer: the rule
``shared_schema.tflite_file`` checks, which makes one qdelta patch every sub-network. A
sub-network's label map is at its own resolution: resizing 21 score maps to the student's
513x513 and taking their argmax would cost the small ones as much as their convolutions; the
device scales the labels up instead (`edge_runtime.opa.runner`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edge_runtime.opa.subnets import (
    FEATURES,
    IMAGE,
    LABELS,
    SCORES,
    head_key,
    pioneer_key,
    tail_key,
    whole_key,
)
from shared_schema.tflite_file import Operator, TFLiteFile, round_half_away

_OP = schema.BuiltinOperator


class ElasticBuildError(ValueError):
    """A student or a setting the elastic file cannot be built from (the message says which)."""


@dataclass(frozen=True)
class Block:
    """A residual block: ops ``first``..``add`` (positions in subgraph 0), whose ADD sums the
    block's input and what the ops before it computed from that input alone."""

    first: int
    add: int
    input: int  # tensor
    output: int  # tensor (the ADD's)
    channels: int


@dataclass(frozen=True)
class PioneerHead:
    """The pioneer's scoring head in real values: scores = features @ weights.T + bias, per
    pixel; the output grid spans ``scores_range``."""

    weights: np.ndarray  # (classes, feature channels)
    bias: np.ndarray  # (classes,)
    scores_range: tuple[float, float]


@dataclass(frozen=True)
class ElasticLayout:
    """Which sub-networks to build."""

    resolutions: tuple[int, ...] = (513, 385, 257)
    depths: tuple[int, ...] = (0, 4, 8)  # residual blocks skipped, in `skip_order`
    pioneer_stride: int = 4
    # Also each sub-network whole, in one subgraph (no inheritance): the form OPA's split is
    # measured against (`cloud-trainer opa forms`).
    whole_subnets: bool = False


def residual_blocks(file: TFLiteFile) -> list[Block]:
    """Every residual block of subgraph 0, in graph order."""
    ops = file.operators
    producer = {t: op.index for op in ops for t in op.outputs}
    readers: dict[int, set[int]] = {}
    for op in ops:
        for t in op.inputs:
            readers.setdefault(t, set()).add(op.index)
    blocks = []
    for op in ops:
        if op.code != _OP.ADD or len(op.inputs) != 2:
            continue
        for residual, branch in (op.inputs, op.inputs[::-1]):
            first = producer.get(residual, -1) + 1
            if _is_chain(ops[first : op.index], residual, branch, readers):
                channels = file.tensor(op.outputs[0]).shape[-1]
                blocks.append(Block(first, op.index, residual, op.outputs[0], channels))
                break
    return blocks


def _is_chain(chain: tuple[Operator, ...], source: int, end: int, readers: dict) -> bool:
    """The ops form one path from `source` to `end`, read only by each other (and the ADD)."""
    if not chain or chain[-1].outputs != (end,):
        return False
    current = source
    inside = {op.index for op in chain}
    for op in chain:
        if op.inputs[0] != current or len(op.outputs) != 1:
            return False
        current = op.outputs[0]
        if op is not chain[-1] and not readers.get(current, set()) <= inside:
            return False
    return True


def pioneer_end(file: TFLiteFile, stride: int) -> Block:
    """The block the pioneer ends with: the last residual block at output stride `stride`."""
    size = file.input_size[0]

    def stride_of(tensor: int) -> int:
        side = file.tensor(tensor).shape[1]
        return (size - 1) // (side - 1) if side > 1 else 0

    at_stride = [b for b in residual_blocks(file) if stride_of(b.output) == stride]
    if not at_stride:
        raise ElasticBuildError(f"the student has no residual block at stride {stride}")
    return at_stride[-1]


def skip_order(blocks: list[Block]) -> list[Block]:
    """The order blocks are skipped in as the depth grows: the last block of each stage (a run
    of blocks of one width), the deepest (most costly) stage first, then the stages' next-to-last
    blocks, and so on; a stage keeps at least its first block."""
    stages: list[list[Block]] = []
    for block in blocks:
        if stages and stages[-1][-1].channels == block.channels:
            stages[-1].append(block)
        else:
            stages.append([block])
    order = []
    for round_ in range(max((len(s) for s in stages), default=0)):
        for stage in reversed(stages):
            if round_ < len(stage):
                order.append(stage[len(stage) - 1 - round_])
    return order


def elastic_model(data: bytes, head: PioneerHead, layout: ElasticLayout | None = None) -> bytes:
    """The elastic file of the quantized student ``data``: subgraph 0 is ``data``'s graph,
    unchanged; raises ElasticBuildError for a student or layout it cannot build."""
    layout = layout or ElasticLayout()
    file = TFLiteFile(data)
    builder = _Builder(file, head, layout)
    return builder.build()


class _Builder:
    def __init__(self, file: TFLiteFile, head: PioneerHead, layout: ElasticLayout) -> None:
        self.file = file
        self.layout = layout
        self.model = schema.ModelT.InitFromPackedBuf(file.data, 0)
        graph = self.model.subgraphs[0]
        (self.image,) = (int(i) for i in graph.inputs)
        self.size = file.input_size[0]
        if file.input_size[0] != file.input_size[1]:
            raise ElasticBuildError(f"the student's input is not square: {file.input_size}")
        for r in layout.resolutions:
            if r < 2 or (r - 1) % 16 or r > self.size:
                raise ElasticBuildError(
                    f"resolution {r}: choose 16k+1 values up to the student's {self.size}"
                )
        blocks = residual_blocks(file)
        self.boundary = pioneer_end(file, layout.pioneer_stride)
        tail_blocks = skip_order([b for b in blocks if b.first > self.boundary.add])
        for d in layout.depths:
            if not 0 <= d <= len(tail_blocks):
                raise ElasticBuildError(
                    f"depth {d}: the tail has {len(tail_blocks)} residual blocks to skip"
                )
        self.skipped = {d: tail_blocks[:d] for d in layout.depths}
        self.table = list(graph.tensors)
        self.head_tensors = self._head(head)

    # -- tensors -------------------------------------------------------------------------------

    def _append_tensor(self, tensor: schema.TensorT, data: bytes | None = None) -> int:
        if data is None:
            tensor.buffer = 0  # TFLite's empty buffer: computed at run time
        else:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(data, np.uint8)
            self.model.buffers.append(buffer)
            tensor.buffer = len(self.model.buffers) - 1
        self.table.append(tensor)
        return len(self.table) - 1

    def _head(self, head: PioneerHead) -> tuple[int, int, int]:
        """(weights, bias, scores) tensor indices of the pioneer's head."""
        features = self.file.tensor(self.boundary.output)
        weights = np.asarray(head.weights, np.float64)
        bias = np.asarray(head.bias, np.float64)
        classes = self.file.num_classes
        if weights.shape != (classes, features.shape[-1]) or bias.shape != (classes,):
            raise ElasticBuildError(
                f"the head must be ({classes}, {features.shape[-1]}) weights and ({classes},)"
                f" biases, got {weights.shape} and {bias.shape}"
            )
        lo, hi = head.scores_range
        if not (np.isfinite(weights).all() and np.isfinite(bias).all() and lo < 0 < hi):
            raise ElasticBuildError("the head's values must be finite and its range span 0")
        w_scale = max(float(np.abs(weights).max()), 1e-8) / 127.0
        b_scale = float(features.scale[0]) * w_scale
        w_stored = (round_half_away(weights / w_scale) + 128).astype(np.uint8)
        b_stored = round_half_away(bias / b_scale).astype(np.int32)
        s_scale = (hi - lo) / 255.0
        s_zero = int(round_half_away(np.array(-lo / s_scale)))
        w = self._append_tensor(
            _tensor(
                b"opa/head/weights",
                (classes, 1, 1, weights.shape[1]),
                schema.TensorType.UINT8,
                w_scale,
                128,
            ),
            w_stored.reshape(classes, 1, 1, -1).tobytes(),
        )
        b = self._append_tensor(
            _tensor(b"opa/head/bias", (classes,), schema.TensorType.INT32, b_scale, 0),
            b_stored.tobytes(),
        )
        out_shape = (*features.shape[:3], classes)
        s = self._append_tensor(
            _tensor(b"opa/head/scores", out_shape, schema.TensorType.UINT8, s_scale, s_zero)
        )
        return w, b, s

    def _size_constant(self, op: Operator) -> int:
        height, width = self.file.tensor_values(op.inputs[1]).ravel()
        if height != width:
            raise ElasticBuildError(f"op {op.index} resizes to a non-square size")
        return int(height)

    def _scaled(self, side: int, resolution: int) -> int:
        return side if side <= 1 else (side - 1) * (resolution - 1) // (self.size - 1) + 1

    # -- subgraphs -----------------------------------------------------------------------------

    def build(self) -> bytes:
        graph0 = self.model.subgraphs[0]
        entries = [e for r in self.layout.resolutions for e in self._entries(r)]
        graph0.tensors = self._tensors_at(self.size, names=True)
        self.model.subgraphs = [graph0]
        self.model.signatureDefs = []
        for key, ops, inputs, outputs, resolution in entries:
            graph = schema.SubGraphT()
            graph.tensors = self._tensors_at(resolution, names=False)
            graph.operators = ops
            graph.inputs = np.array(list(inputs.values()), np.int32)
            graph.outputs = np.array(list(outputs.values()), np.int32)
            graph.name = key.encode()
            self.model.subgraphs.append(graph)
            self.model.signatureDefs.append(
                _signature(key, len(self.model.subgraphs) - 1, inputs, outputs)
            )
        builder = flatbuffers.Builder(len(self.file.data) * 2)
        builder.Finish(self.model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    def _entries(self, r: int) -> Iterator[tuple[str, list, dict, dict, int]]:
        """(signature key, ops, inputs, outputs, resolution) of every subgraph at `r`."""
        raw_ops = list(self.model.subgraphs[0].operators)
        (output,) = (int(i) for i in self.model.subgraphs[0].outputs)
        features, scores = self.boundary.output, self.head_tensors[2]
        pioneer = raw_ops[: self.boundary.add + 1]
        yield pioneer_key(r), pioneer, {IMAGE: self.image}, {FEATURES: features}, r
        yield head_key(r), [self._head_op()], {FEATURES: features}, {SCORES: scores}, r
        sizes = self._size_tensors(r)
        for d in self.layout.depths:
            tail = self._tail_ops(raw_ops, self.skipped[d], sizes, r)
            yield tail_key(r, d), tail, {FEATURES: features}, {LABELS: output}, r
            if self.layout.whole_subnets:
                yield whole_key(r, d), pioneer + tail, {IMAGE: self.image}, {LABELS: output}, r

    def _head_op(self) -> schema.OperatorT:
        conv = [
            i
            for i, c in enumerate(self.model.operatorCodes)
            if max(c.builtinCode, c.deprecatedBuiltinCode) == _OP.CONV_2D
        ]
        if not conv:
            raise ElasticBuildError("the student has no CONV_2D to give the head")
        op = schema.OperatorT()
        op.opcodeIndex = conv[0]
        op.inputs = np.array([self.boundary.output, *self.head_tensors[:2]], np.int32)
        op.outputs = np.array([self.head_tensors[2]], np.int32)
        op.builtinOptionsType = schema.BuiltinOptions.Conv2DOptions
        options = schema.Conv2DOptionsT()
        options.padding, options.strideW, options.strideH = schema.Padding.SAME, 1, 1
        op.builtinOptions = options
        return op

    def _size_tensors(self, resolution: int) -> dict[int, int]:
        """For each resize's size constant (a feature map's, or the input's), the constant at
        `resolution`."""
        out = {}
        for op in self.file.operators:
            if op.code != _OP.RESIZE_BILINEAR or op.inputs[1] in out:
                continue
            side = self._size_constant(op)
            if resolution != self.size:
                scaled = self._scaled(side, resolution)
                tensor = _tensor(
                    f"opa/size_r{resolution}_{side}".encode(), (2,), schema.TensorType.INT32
                )
                data = np.array([scaled, scaled], "<i4").tobytes()
                out[op.inputs[1]] = self._append_tensor(tensor, data)
        return out

    def _tail_ops(
        self,
        raw_ops: list[schema.OperatorT],
        skipped: list[Block],
        sizes: dict[int, int],
        resolution: int,
    ) -> list[schema.OperatorT]:
        """The ops after the pioneer, without the skipped blocks: a skipped block's output is
        its input; a resize to a feature map's size reads the size at the tail's resolution."""
        dropped = {i for b in skipped for i in range(b.first, b.add + 1)}
        redirect: dict[int, int] = {}
        for block in sorted(skipped, key=lambda b: b.add):
            redirect[block.output] = redirect.get(block.input, block.input)
        ops = []
        for position in range(self.boundary.add + 1, len(raw_ops)):
            if position in dropped:
                continue
            op = copy.copy(raw_ops[position])
            inputs = [redirect.get(int(t), int(t)) for t in op.inputs]
            code = self.file.operators[position].code
            if code == _OP.RESIZE_BILINEAR:
                inputs[1] = sizes.get(inputs[1], inputs[1])
            elif code == _OP.AVERAGE_POOL_2D:
                op.builtinOptions = self._global_pool(op.builtinOptions, inputs[0], resolution)
            op.inputs = np.array(inputs, np.int32)
            ops.append(op)
        return ops

    def _global_pool(self, options: object, source: int, resolution: int) -> object:
        """A pooling over its whole input (DeepLab's image pooling) at `resolution`."""
        side = self.file.tensor(source).shape[1]
        if (options.filterHeight, options.filterWidth) != (side, side):
            raise ElasticBuildError("only a pooling over its whole input can change resolution")
        options = copy.copy(options)
        options.filterHeight = options.filterWidth = self._scaled(side, resolution)
        return options

    def _tensors_at(self, resolution: int, names: bool) -> list[schema.TensorT]:
        """The shared tensor table with its activations' shapes at `resolution`."""
        out = []
        for tensor in self.table:
            tensor = copy.copy(tensor)
            if not names:
                tensor.name = b""
            shape = None if tensor.shape is None else [int(d) for d in tensor.shape]
            constant = self.model.buffers[tensor.buffer].data is not None
            if len(shape or ()) >= 3 and not constant:
                shape[1:3] = (self._scaled(side, resolution) for side in shape[1:3])
                tensor.shape = np.array(shape, np.int32)
            out.append(tensor)
        return out


def _tensor(
    name: bytes, shape: tuple[int, ...], dtype: int, scale: float | None = None, zero: int = 0
) -> schema.TensorT:
    tensor = schema.TensorT()
    tensor.name = name
    tensor.shape = np.array(shape, np.int32)
    tensor.type = dtype
    if scale is not None:
        quant = schema.QuantizationParametersT()
        quant.scale = np.array([scale], np.float32)
        quant.zeroPoint = np.array([zero], np.int64)
        tensor.quantization = quant
    return tensor


def _signature(key: str, subgraph: int, inputs: dict, outputs: dict) -> schema.SignatureDefT:
    signature = schema.SignatureDefT()
    signature.signatureKey = key.encode()
    signature.subgraphIndex = subgraph
    signature.inputs = [_tensor_map(name, index) for name, index in inputs.items()]
    signature.outputs = [_tensor_map(name, index) for name, index in outputs.items()]
    return signature


def _tensor_map(name: str, index: int) -> schema.TensorMapT:
    tensor_map = schema.TensorMapT()
    tensor_map.name, tensor_map.tensorIndex = name.encode(), index
    return tensor_map
