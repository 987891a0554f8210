"""The elastic student in torch: the imported student (subgraph 0 of the elastic file) and its
pioneer head, able to run any sub-network the file declares, read from the file itself (a tail
subgraph keeps subgraph 0's tensor indices, so the ops it leaves out are the skipped blocks).
Training samples sub-networks by the sandwich rule (largest, smallest, random ones each step),
so every sub-network keeps up with the scene; the write-back patches the one shared set of
weights, the head's included."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cloud_trainer.opa.elastic import residual_blocks
from cloud_trainer.student import QuantizedConstant, import_tflite
from cloud_trainer.student.tflite.builders import BUILDERS
from cloud_trainer.student.tflite.graph import Graph
from cloud_trainer.student.tflite.ops import Env, Node, Op
from edge_runtime.opa.subnets import FEATURES, ElasticModel, Subnet
from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError


def is_elastic(data: bytes) -> bool:
    """Whether the model file declares OPA sub-networks."""
    try:
        ElasticModel.of(data)
    except TFLiteFormatError:
        return False
    return True


class ElasticStudent(nn.Module):
    """`forward` is the whole student; `subnet_logits` any sub-network; `head_scores` the
    pioneer head's class scores."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.file = TFLiteFile(data)
        self.model = ElasticModel(self.file)
        self.student = import_tflite(data)
        self.head = _head_op(self.file, self.model)
        self.features = next(iter(self.model.heads.values())).inputs[FEATURES]
        produced_by = {op.output: position for position, op in enumerate(self.student.ops)}
        self._boundary = produced_by[self.features]
        self._skipped = {s.name: self._skipped_positions(s) for s in self.model.subnets}
        self._block_input = self._block_inputs()
        self._twins = {s.name: self._rewired_ops(s) for s in self.model.subnets}

    def forward(self, x: Tensor | np.ndarray) -> Tensor:
        return self.student(x)

    @property
    def num_classes(self) -> int:
        return self.student.num_classes

    @property
    def fake_quant(self) -> bool:
        return self.student.fake_quant

    @fake_quant.setter
    def fake_quant(self, value: bool) -> None:
        self.student.fake_quant = value

    def constants(self) -> Iterator[QuantizedConstant]:
        """Every weight and bias in graph order, then the head's: what a write-back stores."""
        return chain(self.student.constants(), (self.head.weight, self.head.bias))

    def sandwich_loss(
        self, rgb: Tensor, labels: Tensor, weights: Tensor | None, rng: np.random.Generator
    ) -> Tensor:
        """One training step's loss by the sandwich rule (`sandwich`, `sandwich_loss`)."""
        return sandwich_loss(self, rgb, labels, sandwich(self.model, rng), weights)

    def _skipped_positions(self, subnet: Subnet) -> frozenset[int]:
        kept = {out for op in self.file.operators_of(subnet.tail.subgraph) for out in op.outputs}
        return frozenset(
            p
            for p, op in enumerate(self.student.ops)
            if p > self._boundary and op.output not in kept
        )

    def _rewired_ops(self, subnet: Subnet) -> dict[int, Op]:
        """The ops that read a skipped block's output, rebuilt from the tail's own op so that
        they read its input on that input's grid (as LiteRT does), sharing the weights."""
        graph = Graph(self.file)
        graph._constants = {c.spec.tensor_index: c for c in self.student.constants()}
        position_of = {op.output: p for p, op in enumerate(self.student.ops)}
        original = self.file.operators
        twins = {}
        for op in self.file.operators_of(subnet.tail.subgraph):
            position = position_of.get(op.outputs[0])
            if position is None:  # the final ARG_MAX, which the torch student leaves out
                continue
            reads = self.student.ops[position].inputs  # its activations, not its constants
            pairs = zip(op.inputs, original[position].inputs, strict=True)
            if all(new == old for new, old in pairs if old in reads):
                continue
            name = self.student.ops[position].op_name
            node = Node(position, name, op.inputs, op.outputs, self.file.builtin_options(op))
            twins[position] = BUILDERS[name](graph, node)
        return twins

    def _block_inputs(self) -> dict[int, int]:
        """For each op of a residual block, the tensor its output stands for when the block is
        skipped: the block's input."""
        return {
            position: block.input
            for block in residual_blocks(self.file)
            for position in range(block.first, block.add + 1)
        }

    def subnet_logits(self, x: Tensor, subnet: Subnet) -> Tensor:
        """The sub-network's logits (N, C, h, w) for an NHWC uint8 batch at its resolution."""
        twins = self._twins[subnet.name]
        logits, op = self._run(x, self._skipped[subnet.name], self.student.logits_index, twins)
        return self.student.real(logits, op.out)

    def head_scores(self, x: Tensor) -> Tensor:
        """The head's scores (N, C, h, w) on the pioneer's features, for an NHWC uint8 batch."""
        features, _ = self._run(x, frozenset(), self.features, {})
        scores = self.head([features], Env(self.student.fake_quant))
        return self.student.real(scores, self.head.out)

    def _run(
        self, x: Tensor, skipped: frozenset[int], until: int, twins: dict[int, Op]
    ) -> tuple[Tensor, Op]:
        """The student's ops up to the one writing tensor `until`, those in `skipped` left out:
        that tensor as the ops hold it (see `ops`) and the op that wrote it."""
        env = Env(self.student.fake_quant)
        prepared = self.student._prepare_input(x)
        table = {self.student.input_index: prepared}
        env.sizes[self.student.input_index] = tuple(prepared.shape[2:])
        for position, op in enumerate(self.student.ops):
            if position in skipped:
                # The block's output is its input; its inner tensors take the input's size.
                source = self._block_input[position]
                table[op.output], env.sizes[op.output] = table[source], env.sizes[source]
            else:
                op = twins.get(position, op)
                y = table[op.output] = op([table[t] for t in op.inputs], env)
                if y.ndim == 4:
                    env.sizes[op.output] = (y.shape[2], y.shape[3])
            if op.output == until:
                return table[until], op
        raise ValueError(f"tensor {until} is not computed by the student's graph")

    def stored(self) -> dict[int, np.ndarray]:
        """Every weight and bias at its frozen grid, the head's included, by tensor index."""
        return {c.spec.tensor_index: c.stored() for c in self.constants()}


def _head_op(file: TFLiteFile, model: ElasticModel) -> Op:
    """The head's convolution, built by the importer's own CONV_2D builder from the file."""
    (op,) = file.operators_of(next(iter(model.heads.values())).subgraph)
    node = Node(op.index, "CONV_2D", op.inputs, op.outputs, file.builtin_options(op))
    return BUILDERS["CONV_2D"](Graph(file), node)


def _scaled_side(side: int, resolution: int, full: int) -> int:
    return (side - 1) * (resolution - 1) // (full - 1) + 1


def sandwich(model: ElasticModel, rng: np.random.Generator, randoms: int = 2) -> list[Subnet]:
    """The sub-networks one step trains: the largest, the smallest and `randoms` others."""
    middle = list(model.subnets[1:-1])
    picked = (
        rng.choice(len(middle), size=min(randoms, len(middle)), replace=False) if middle else []
    )
    return [model.largest, model.smallest, *(middle[i] for i in picked)]


def sandwich_loss(
    elastic: ElasticStudent,
    rgb: Tensor,
    labels: Tensor,
    subnets: Sequence[Subnet],
    weights: Tensor | None,
) -> Tensor:
    """The step's loss: cross-entropy of every sub-network (its logits scaled back to the crop)
    against the teacher's labels, plus the head's at the pioneer's grid."""
    full = elastic.file.input_size[0]
    side = rgb.shape[1]
    total = torch.zeros((), device=rgb.device)
    for subnet in subnets:
        small = _scaled_side(side, subnet.resolution, full)
        x = rgb
        if small != side:
            x = F.interpolate(
                rgb.permute(0, 3, 1, 2).float(),
                size=(small, small),
                mode="bilinear",
                antialias=True,
                align_corners=True,
            )
            x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        logits = elastic.subnet_logits(x, subnet)
        if logits.shape[2] != side:
            logits = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=True)
        total = total + F.cross_entropy(logits, labels, weight=weights)
    scores = elastic.head_scores(rgb)
    step = (side - 1) // (scores.shape[2] - 1)
    total = total + F.cross_entropy(scores, labels[:, ::step, ::step], weight=weights)
    return total
