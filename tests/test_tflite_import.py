"""Importing the Coral DeepLab TFLite models as trainable torch modules (cloud_trainer.student)."""

import os
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from cloud_trainer.student import (
    TFLiteStudent,
    UnsupportedOpsError,
    import_tflite,
    quantized_weights,
    saturated_weights,
    tensor_buffer_indices,
)
from cloud_trainer.student.agreement import check_agreement, sample_frames

STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
TEACHER = "models/coral/deeplabv3_mnv2_pascal_quant.tflite"
EDGETPU = "models/coral/deeplabv3_mnv2_dm05_pascal_quant_edgetpu.tflite"
VIDEO = "videos/vtest.avi"
MIN_AGREEMENT = 0.9995  # fraction of pixels whose labels match LiteRT's


def _shared(relative: str) -> Path:
    """A file of the shared data; skip when it is absent, fail under AMS_REQUIRE_SHARED=1."""
    configured = os.environ.get("AMS_SHARED_DIR")
    root = Path(configured) if configured else Path(__file__).resolve().parents[1].parent / "shared"
    path = root / relative
    if not path.is_file():
        message = f"shared data not found: {path} (set AMS_SHARED_DIR)"
        if os.environ.get("AMS_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def frames_513() -> torch.Tensor:
    return torch.from_numpy(sample_frames(_shared(VIDEO), 2, 513, 513))


def _conv_tensors(path: Path) -> tuple[schema.Model, list[int]]:
    """The flatbuffer (read with the plain accessor API) and its weight and bias tensors."""
    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    tensors = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin in (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D):
            tensors += [int(t) for t in op.InputsAsNumpy()[1:]]
    return model, tensors


@pytest.mark.parametrize("model", [STUDENT, TEACHER])
def test_labels_match_litert_on_video_frames(model: str) -> None:
    result = check_agreement(_shared(model), _shared(VIDEO), frames=2)
    assert result["frames"] == 2
    assert result["parameters"] > 0
    # The target is 0.995; against the pinned LiteRT the emulation is exact (1.0), and a single
    # rounding slip in one op (e.g. RESIZE_BILINEAR truncating) already costs ~0.001.
    assert result["pixel_agreement"] >= MIN_AGREEMENT, result


@pytest.mark.parametrize("model", [STUDENT, TEACHER])
def test_unchanged_weights_write_back_the_original_bytes(model: str) -> None:
    path = _shared(model)
    flatbuffer, conv_tensors = _conv_tensors(path)
    student = import_tflite(path)
    written = quantized_weights(student)
    buffers = tensor_buffer_indices(student)
    assert set(written) == set(conv_tensors) == set(buffers)
    graph = flatbuffer.Subgraphs(0)
    for tensor_index, values in written.items():
        tensor = graph.Tensors(tensor_index)
        assert buffers[tensor_index] == tensor.Buffer()
        assert values.shape == tuple(tensor.ShapeAsNumpy())
        original = flatbuffer.Buffers(tensor.Buffer()).DataAsNumpy().tobytes()
        assert values.tobytes() == original, f"tensor {tensor_index}"


def test_a_changed_weight_changes_only_its_value_in_the_file_layout() -> None:
    student = import_tflite(_shared(STUDENT))
    before = quantized_weights(student)
    depthwise = next(c for c in student.constants() if c.spec.shape[0] == 1)  # 1HWC filter
    channel, row, col = 5, 1, 2
    step = -3 if before[depthwise.spec.tensor_index][0, row, col, channel] > 127 else 3
    with torch.no_grad():
        # master layout C1HW; three grid steps of that tensor's frozen scale
        depthwise.master[channel, 0, row, col] += step * depthwise.spec.quant.scale[0]
    after = quantized_weights(student)
    index = depthwise.spec.tensor_index
    difference = after[index].astype(int) - before[index].astype(int)
    assert difference[0, row, col, channel] == step
    assert np.count_nonzero(difference) == 1
    assert all(np.array_equal(before[t], after[t]) for t in before if t != index)


def test_weights_pushed_past_the_int8_range_count_as_saturated() -> None:
    student = import_tflite(_shared(STUDENT))
    assert saturated_weights(student) == 0  # the file's own values all fit
    weight = next(c for c in student.constants() if c.spec.dtype == np.uint8)
    with torch.no_grad():
        weight.master[0, 0, 0, :3] += 300 * weight.spec.quant.scale[0]  # beyond 255 steps
    assert saturated_weights(student) == 3
    stored = weight.stored()
    assert np.count_nonzero(stored == 255) >= 3  # the file holds them clamped


def test_edgetpu_model_is_rejected_naming_its_custom_op() -> None:
    with pytest.raises(UnsupportedOpsError, match="edgetpu-custom-op") as error:
        import_tflite(_shared(EDGETPU).read_bytes())
    assert isinstance(error.value, ValueError)
    assert error.value.ops == ("edgetpu-custom-op",)


def test_not_a_flatbuffer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        import_tflite(b"\x00" * 64)


def test_parameters_come_in_graph_order_and_count_every_weight() -> None:
    path = _shared(STUDENT)
    flatbuffer, conv_tensors = _conv_tensors(path)
    student = import_tflite(path)
    names = [name for name, _ in student.named_parameters()]
    assert names[:2] == ["ops.0.weight.master", "ops.0.bias.master"]
    assert [c.spec.tensor_index for c in student.constants()] == conv_tensors
    graph = flatbuffer.Subgraphs(0)
    elements = sum(int(np.prod(graph.Tensors(t).ShapeAsNumpy())) for t in conv_tensors)
    assert student.parameter_count == elements == sum(p.numel() for p in student.parameters())


@pytest.mark.parametrize("model", [STUDENT, TEACHER])
def test_the_student_knows_the_geometry_of_its_file(model: str) -> None:
    student = import_tflite(_shared(model))
    assert student.input_size == (513, 513) and student.num_classes == 21


def test_fake_quant_gradients_pass_straight_through_to_the_weights(
    frames_513: torch.Tensor,
) -> None:
    student = import_tflite(_shared(STUDENT))
    assert student.fake_quant
    x = frames_513[:1, ::4, ::4]  # 129 x 129 keeps the test fast
    target = student.labels(x)
    first = next(student.constants())
    with torch.no_grad():
        logits = student(x)
        # a nudge well inside one grid step leaves the emulated integer model unchanged...
        first.master += 0.1 * torch.tensor(first.spec.quant.scale[0])
        assert torch.equal(student(x), logits)
    # ...yet the gradient reaches every master tensor through the rounding
    F.cross_entropy(student(x), (target + 1) % 21).backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) == len(grads)


def test_activations_are_real_values_on_their_tensors_grids(frames_513: torch.Tensor) -> None:
    student = import_tflite(_shared(STUDENT))
    x = frames_513[:1, ::4, ::4]
    inner = [op.output for op in student.ops[::7]]  # convolutions, adds, a concatenation...
    taken = student.activations(x, inner)
    for tensor, values in zip(inner, taken, strict=True):
        grid = student.grids[tensor]
        units = values / grid.scale
        assert torch.allclose(units, units.round(), atol=1e-3)  # on the grid, in real units
        assert units.min() >= grid.qmin - grid.zero_point - 1e-3
        assert units.max() <= grid.qmax - grid.zero_point + 1e-3
    (logits,) = student.activations(x, (student.logits_index,))
    assert torch.equal(logits, student(x))


def test_float_mode_runs_the_same_graph_without_quantization(frames_513: torch.Tensor) -> None:
    student = import_tflite(_shared(STUDENT))
    quantized = student.labels(frames_513)
    student.fake_quant = False
    floating = student.labels(frames_513)
    agreement = (quantized == floating).float().mean().item()
    assert 0.95 <= agreement < 1.0  # close, but not the integer emulation


def _litert_variant(path: Path, size: int, *, scores: bool = False) -> bytes:
    """The DeepLab model rewritten for size x size inputs, as LiteRT itself would run it there;
    with `scores`, ending before ARG_MAX so that it outputs the quantized class scores."""
    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    graph = model.subgraphs[0]
    original = int(graph.tensors[graph.inputs[0]].shape[1])
    sizes = {original: size}
    for _ in range(4):  # output stride 16: four stride-2 SAME stages, each rounding up
        original, size = -(-original // 2), -(-size // 2)
        sizes[original] = size
    for tensor in graph.tensors:
        if tensor.shape is not None and len(tensor.shape) == 4:
            n, h, w, c = (int(d) for d in tensor.shape)
            tensor.shape = np.array([n, sizes.get(h, h), sizes.get(w, w), c], np.int32)
            tensor.shapeSignature = None
    size_tensors = set()
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == schema.BuiltinOperator.RESIZE_BILINEAR:
            size_tensors.add(int(op.inputs[1]))
        elif builtin == schema.BuiltinOperator.AVERAGE_POOL_2D:
            options = op.builtinOptions
            options.filterHeight = sizes.get(options.filterHeight, options.filterHeight)
            options.filterWidth = sizes.get(options.filterWidth, options.filterWidth)
    for index in size_tensors:
        buffer = model.buffers[graph.tensors[index].buffer]
        values = [sizes[int(v)] for v in np.frombuffer(buffer.data.tobytes(), "<i4")]
        buffer.data = np.frombuffer(np.array(values, "<i4").tobytes(), np.uint8)
    if scores:
        arg_max = graph.operators.pop()
        graph.outputs = np.array(arg_max.inputs[:1], np.int32)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _run(model: bytes, frame: np.ndarray) -> tuple[np.ndarray, dict]:
    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], frame[None])
    interpreter.invoke()
    (output,) = interpreter.get_output_details()
    return interpreter.get_tensor(output["index"])[0], output


@pytest.mark.parametrize("model", [STUDENT, TEACHER])
def test_fake_quant_scores_equal_litert_quantized_scores(
    model: str, frames_513: torch.Tensor
) -> None:
    path = _shared(model)
    frame = frames_513[1].numpy()
    expected, output = _run(_litert_variant(path, 513, scores=True), frame)
    scale, zero_point = output["quantization"]
    with torch.no_grad():
        logits = import_tflite(path)(frames_513[1:])[0].permute(1, 2, 0)
    ours = torch.round(logits / scale + zero_point).numpy()
    # Every op is emulated bit-exactly; any slip shows up in thousands of the 5.5M scores.
    assert (ours == expected).mean() >= 0.99999


def test_other_resolutions_match_litert_running_the_graph_resized_to_them() -> None:
    path = _shared(STUDENT)
    student = import_tflite(path)
    frames = sample_frames(_shared(VIDEO), 2, 321, 321)
    assert student(torch.from_numpy(frames[:1])).shape == (1, 21, 321, 321)
    labels = student.labels(torch.from_numpy(frames)).numpy()
    assert labels.shape == (2, 321, 321)
    variant = _litert_variant(path, 321)
    for frame, ours in zip(frames, labels, strict=True):
        expected, _ = _run(variant, frame)
        assert (expected == ours).mean() >= MIN_AGREEMENT


def test_a_batch_gives_the_labels_of_its_frames(frames_513: torch.Tensor) -> None:
    student = import_tflite(_shared(STUDENT))
    batch = student.labels(frames_513)
    assert batch.shape == (2, 513, 513)
    for i in range(2):
        assert torch.equal(batch[i : i + 1], student.labels(frames_513[i : i + 1]))


def test_float_input_is_the_real_valued_input_tensor(frames_513: torch.Tensor) -> None:
    student: TFLiteStudent = import_tflite(_shared(STUDENT))
    x = frames_513[:1, ::8, ::8]
    real = (x.float() - 128) / 128  # the input tensor's scale and zero point
    with torch.no_grad():
        assert torch.equal(student(x), student(real))
    with pytest.raises(ValueError, match="NHWC"):
        student(x.permute(0, 3, 1, 2))
