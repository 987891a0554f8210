"""The imported student: a TFLite graph as a torch module, how a file becomes one, and how its
weights go back into the file."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cloud_trainer.student.tflite.builders import BUILDERS, UnsupportedOpsError
from cloud_trainer.student.tflite.graph import Graph
from cloud_trainer.student.tflite.ops import Env, Node, Op
from cloud_trainer.student.tflite.quantization import ActQuant, QuantizedConstant
from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError


class TFLiteStudent(nn.Module):
    """A TFLite graph rebuilt in torch; see the package docstring.

    `fake_quant` (default True) emulates the integer kernels at the file's frozen scales;
    False runs the same graph in plain float. Parameters are in graph order (first layers first),
    each layer's weight before its bias.
    """

    def __init__(
        self,
        ops: Sequence[Op],
        input_index: int,
        input_shape: tuple[int, int, int],
        input_quant: ActQuant,
        input_dtype: torch.dtype,
        logits_index: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.input_index = input_index
        self.input_shape = input_shape  # H, W, C of the file's input tensor
        self.input_quant = input_quant
        self.input_dtype = input_dtype
        self.logits_index = logits_index
        self.num_classes = num_classes  # channels of the logits
        self.fake_quant = True
        # The grid of every activation tensor, for the values a forward pass hands out.
        self.grids: dict[int, ActQuant | None] = {input_index: input_quant}
        self.grids.update((op.output, op.out) for op in ops)
        last_use = {t: position for position, op in enumerate(ops) for t in op.inputs}
        last_use.pop(logits_index, None)
        self._release: list[list[int]] = [[] for _ in ops]
        for tensor, position in last_use.items():
            self._release[position].append(tensor)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the file's input; the module itself runs at any size."""
        return self.input_shape[0], self.input_shape[1]

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
        return self.input_quant.quantize(x) if self.fake_quant else x

    def forward(self, x: Tensor | np.ndarray) -> Tensor:
        """Logits (N, C, H, W) for an NHWC batch.

        x: integers of the model's input dtype (e.g. uint8 pixels, quantized at the input
        tensor's scale and zero point), or floats already in the real-valued domain of the input
        tensor, i.e. scale * (pixel - zero_point), such as [-1, 1) for the Coral DeepLab models.
        """
        (logits,) = self.activations(x, (self.logits_index,))
        return logits

    def activations(self, x: Tensor | np.ndarray, tensors: Sequence[int]) -> list[Tensor]:
        """The real values of these tensors (TFLite indices; NCHW where 4-D) for an NHWC batch,
        as the graph computes them (see ``forward`` for ``x``)."""
        env = Env(self.fake_quant)
        table = {self.input_index: self._prepare_input(x)}
        env.sizes[self.input_index] = tuple(table[self.input_index].shape[2:])
        taken = {t: table[t] for t in tensors if t in table}
        for op, release in zip(self.ops, self._release, strict=True):
            y = op([table[t] for t in op.inputs], env)
            table[op.output] = y
            if op.output in tensors:
                taken[op.output] = y
            if y.ndim == 4:
                env.sizes[op.output] = (y.shape[2], y.shape[3])
            for t in release:
                del table[t]
        missing = [t for t in tensors if t not in taken]
        if missing:
            raise ValueError(f"tensors {missing} are not computed by the student's graph")
        return [self.real(taken[t], self.grids[t]) for t in tensors]

    def real(self, y: Tensor, grid: ActQuant | None) -> Tensor:
        """The real values of a tensor this student's ops computed on ``grid``: in fake-quant
        they hold integers in the grid's units."""
        return grid.real(y) if self.fake_quant and grid is not None else y

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
    graph = Graph(TFLiteFile(data))

    unsupported = dict.fromkeys(n.name for n in graph.nodes if n.name not in BUILDERS)
    if unsupported:
        raise UnsupportedOpsError(list(unsupported))
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError("only models with one input and one output can be imported")
    (input_index,) = graph.inputs
    input_shape = graph.shape(input_index)
    if len(input_shape) != 4:
        raise ValueError(f"the model input must be an NHWC image batch, got shape {input_shape}")

    nodes, logits_index = _without_final_arg_max(graph)
    ops = []
    for node in nodes:
        op = BUILDERS[node.name](graph, node)
        missing = [t for t in op.inputs if t not in graph.produced]
        if missing:
            raise ValueError(
                f"op {node.index} ({node.name}) reads tensors {missing} that no earlier op"
                " produces; constant operands are supported only as weights and biases"
            )
        graph.produced.extend(node.outputs)
        ops.append(op)

    input_quant = graph.act_quant(input_index)
    input_dtype = torch.from_numpy(np.zeros(0, graph.file.tensor(input_index).dtype)).dtype
    return TFLiteStudent(
        ops,
        input_index,
        (input_shape[1], input_shape[2], input_shape[3]),
        input_quant,
        input_dtype,
        logits_index,
        graph.file.num_classes,
    )


def _without_final_arg_max(graph: Graph) -> tuple[list[Node], int]:
    """The nodes to build and the tensor the module returns: training needs the scores, so a
    final ARG_MAX over channels stays out of the module."""
    nodes = graph.nodes
    (output_index,) = graph.outputs
    last = nodes[-1] if nodes else None
    if last is not None and last.name == "ARG_MAX" and last.outputs == (output_index,):
        axis = int(graph.int_values(last.inputs[1])[0])
        if axis % len(graph.shape(last.inputs[0])) == 3:
            return nodes[:-1], last.inputs[0]
    return nodes, output_index


def quantized_weights(student: TFLiteStudent) -> dict[int, np.ndarray]:
    """Every weight and bias written back at its frozen scale, keyed by TFLite tensor index.

    Arrays have the file's storage dtype and TFLite layout, so `arr.tobytes()` is the content of
    the tensor's buffer; unchanged master weights give back the original bytes exactly.
    """
    return {c.spec.tensor_index: c.stored() for c in student.constants()}


def stored_weights(student: TFLiteStudent, layout: TFLiteFile) -> dict[int, np.ndarray]:
    """Every weight and bias as the model file ``layout`` stores it, keyed by tensor index: at
    its frozen scale (``quantized_weights``), or the nearest float16 in a float16 model."""
    out = {}
    for c in student.constants():
        tensor = layout.by_index[c.spec.tensor_index]
        if tensor.is_float:
            out[tensor.index] = tensor.quantize(c.real().ravel(), np.arange(tensor.size))
        else:
            out[tensor.index] = c.stored()
    return out


def student_from(graph: bytes, weights: bytes) -> TFLiteStudent:
    """The student of the quantized file ``graph`` holding the weights of ``weights``: that
    file itself, or a file of the same constants in another precision (``float16_model``)."""
    student = import_tflite(graph)
    if weights != graph:
        file = TFLiteFile(weights)
        for c in student.constants():
            tensor = file.by_index.get(c.spec.tensor_index)
            if tensor is None or tensor.shape != c.spec.shape:
                raise TFLiteFormatError(f"{c.spec.name}: not a constant of the student's graph")
            c.load(tensor.dequantize(file.values(tensor)))
    return student


def saturated_weights(student: TFLiteStudent) -> int:
    """Weights and biases whose trained value the frozen grid cannot hold (clamped on write)."""
    return sum(c.saturated() for c in student.constants())


def tensor_buffer_indices(student: TFLiteStudent) -> dict[int, int]:
    """Flatbuffer buffer index of every weight and bias tensor, keyed by TFLite tensor index."""
    return {c.spec.tensor_index: c.spec.buffer_index for c in student.constants()}
