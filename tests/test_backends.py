"""Inference back-ends (edge_runtime.backends): real models on real frames where this machine can
run them (LiteRT on the CPU, ONNX Runtime on the CPU), clear refusals where it cannot."""

from __future__ import annotations

import subprocess
import sys
import types
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
from ai_edge_litert import interpreter as litert_interpreter
from pydantic import TypeAdapter

from edge_runtime.backends import (
    BackendUnavailable,
    EdgeTpuConfig,
    GpuConfig,
    InferenceConfig,
    LiteRtConfig,
    ModelError,
    NnapiConfig,
    OnnxRuntimeConfig,
    open_engine,
)
from edge_runtime.backends.base import BackendConfig
from edge_runtime.backends.tensors import (
    TensorEngine,
    TensorSpec,
    image_size,
    normalization_table,
)
from edge_runtime.frames import Frame

STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
TEACHER = "models/coral/deeplabv3_mnv2_pascal_quant.tflite"
EDGETPU_STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant_edgetpu.tflite"
VIDEO = "videos/vtest.avi"
SIZE = (513, 513)  # (height, width) of the Coral DeepLab models
FRAME_INDICES = (0, 150, 300)
CPU_HINT = 'set [inference] backend = "litert" in the profile'
# Pixels where the float ONNX student and the quantized LiteRT one agree: measured 0.9994,
# 0.9986, 0.9982 on these frames (0.9968 at worst over 20 frames of the video).
MIN_ONNX_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def frames(shared_dir: Path) -> list[np.ndarray]:
    """A few frames of vtest.avi, scaled the way the runtime does (Frame.rgb, one swscale pass)."""
    wanted, images = set(FRAME_INDICES), []
    with av.open(str(shared_dir / VIDEO)) as container:
        for index, picture in enumerate(container.decode(video=0)):
            if index in wanted:
                images.append(Frame(index, float(picture.time or 0.0), picture).rgb(*SIZE[::-1]))
            if len(images) == len(wanted):
                break
    return images


@pytest.fixture(scope="module")
def student(shared_dir: Path) -> Path:
    return shared_dir / STUDENT


def _bare_litert_labels(
    model: Path, images: list[np.ndarray], *, xnnpack: bool = True
) -> list[np.ndarray]:
    """The reference: LiteRT's interpreter fed the raw pixels, as the Coral examples do."""
    resolver = litert_interpreter.OpResolverType
    interpreter = litert_interpreter.Interpreter(
        model_path=str(model),
        num_threads=2,
        experimental_op_resolver_type=(
            resolver.AUTO if xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        ),
    )
    interpreter.allocate_tensors()
    (source,), (sink,) = interpreter.get_input_details(), interpreter.get_output_details()
    labels = []
    for image in images:
        interpreter.set_tensor(source["index"], image[np.newaxis])
        interpreter.invoke()
        labels.append(interpreter.get_tensor(sink["index"])[0])
    return labels


# --- LiteRT on the CPU, real models -------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "xnnpack"),
    [(STUDENT, True), (STUDENT, False), (TEACHER, True)],
    ids=["student", "student-no-xnnpack", "teacher"],
)
def test_litert_labels_equal_a_bare_interpreter(shared_dir, frames, model, xnnpack):
    path = shared_dir / model
    reference = _bare_litert_labels(path, frames, xnnpack=xnnpack)
    with open_engine(LiteRtConfig(input_size=SIZE, xnnpack=xnnpack), path) as engine:
        assert (engine.name, engine.input_size, engine.num_classes) == ("litert", SIZE, None)
        for image, expected in zip(frames, reference, strict=True):
            labels = engine.infer(image)
            assert labels.shape == SIZE and np.issubdtype(labels.dtype, np.integer)
            np.testing.assert_array_equal(labels, expected)
    # Real frames give real segmentations: a person (15) somewhere in this street scene.
    assert any((labels == 15).any() for labels in reference)


def test_coral_input_quantization_makes_the_input_the_raw_pixels(student, frames):
    engine = open_engine(LiteRtConfig(input_size=SIZE), student)
    prepared = engine.prepare(frames[0])
    assert prepared.dtype == np.uint8
    np.testing.assert_array_equal(prepared, frames[0][np.newaxis])


def test_engines_from_one_model_share_nothing(student, frames):
    config = LiteRtConfig(input_size=SIZE)
    first, second = open_engine(config, student), open_engine(config, student.read_bytes())
    expected = first.infer(frames[0])
    second.infer(frames[1])  # the other engine's run leaves this one's state alone
    np.testing.assert_array_equal(first.infer(frames[0]), expected)
    first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.infer(frames[0])
    np.testing.assert_array_equal(second.infer(frames[0]), expected)


def test_wrong_image_size_names_the_expected_one(student):
    engine = open_engine(LiteRtConfig(input_size=SIZE), student)
    with pytest.raises(ValueError, match=r"513x513x3 uint8 .*Frame\.rgb\(513, 513\)"):
        engine.infer(np.zeros((480, 640, 3), np.uint8))


def test_without_a_profile_input_size_the_model_gives_its_own(student):
    with open_engine(LiteRtConfig(), student) as engine:
        assert engine.input_size == SIZE


def test_a_model_that_leaves_its_size_free_needs_the_profile_to_name_one():
    inputs = TensorSpec((None, 3, None, None), np.dtype(np.float32), channels_last=False)
    with pytest.raises(ModelError, match=r"input size free.*set \[inference\] input_size"):
        image_size(inputs, LiteRtConfig())
    assert image_size(inputs, LiteRtConfig(input_size=(2, 3))) == (2, 3)


def test_profile_input_size_must_match_the_model(student):
    with pytest.raises(ModelError, match=r"model's input is 513x513.* input_size is 257x385"):
        open_engine(LiteRtConfig(input_size=(257, 385)), student)


def test_tflite_runtime_is_the_fallback(monkeypatch, student, frames):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    # The same interpreter module stands in for tflite_runtime's, which has the same API.
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", litert_interpreter)
    engine = open_engine(LiteRtConfig(input_size=SIZE), student)
    np.testing.assert_array_equal(engine.infer(frames[0]), _bare_litert_labels(student, frames)[0])


def test_missing_litert_names_the_package_and_the_other_backend(monkeypatch, student):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(BackendUnavailable) as error:
        open_engine(LiteRtConfig(input_size=SIZE), student)
    assert "LiteRT is not installed" in str(error.value)
    assert 'set [inference] backend = "onnxruntime"' in str(error.value)


# --- corrupt and mismatched models ----------------------------------------------------------------


def _random_bytes() -> bytes:
    return np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()


@pytest.mark.parametrize(
    "config",
    [LiteRtConfig(input_size=SIZE), OnnxRuntimeConfig(input_size=SIZE)],
    ids=["litert", "onnxruntime"],
)
@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda model: _random_bytes(), "cannot load the model"),
        (lambda model: model[: len(model) // 2], "cannot load the model"),
        (lambda model: model[:64], "cannot load the model"),
        (lambda model: b"", "the model is empty"),
    ],
    ids=["random", "truncated-half", "truncated-header", "empty"],
)
def test_corrupt_model_is_a_clear_model_error(student, config, corrupt, message):
    with pytest.raises(ModelError, match=message) as error:
        open_engine(config, corrupt(student.read_bytes()))
    assert isinstance(error.value, ValueError)


def test_missing_model_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"cannot read model .*absent\.tflite"):
        open_engine(LiteRtConfig(input_size=SIZE), tmp_path / "absent.tflite")


def test_edgetpu_model_on_the_cpu_says_which_backend_runs_it(shared_dir):
    with pytest.raises(ModelError) as error:
        open_engine(LiteRtConfig(input_size=SIZE), shared_dir / EDGETPU_STUDENT)
    assert "edgetpu-custom-op" in str(error.value)
    assert 'set [inference] backend = "edgetpu"' in str(error.value)


# --- back-ends this machine cannot run --------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "missing"),
    [
        (EdgeTpuConfig(input_size=SIZE, device="usb"), ["libedgetpu.so.1", "libedgetpu1-std"]),
        (GpuConfig(input_size=SIZE), ["libtensorflowlite_gpu_delegate.so", "[inference] library"]),
        (NnapiConfig(input_size=SIZE), ["libnnapi_delegate.so", "Android"]),
        (GpuConfig(input_size=SIZE, library="libc.so.6"), ["no tflite_plugin_create_delegate"]),
    ],
    ids=["edgetpu", "gpu", "nnapi", "gpu-not-a-delegate"],
)
def test_missing_delegate_says_what_is_missing_and_what_to_set(shared_dir, config, missing):
    with pytest.raises(BackendUnavailable) as error:
        open_engine(config, shared_dir / EDGETPU_STUDENT)
    for words in [*missing, CPU_HINT]:
        assert words in str(error.value)


def test_a_delegate_that_refuses_to_start_is_unavailable(monkeypatch, student):
    """A library that loads and is a delegate plugin, but finds no accelerator."""
    plugin = types.SimpleNamespace(tflite_plugin_create_delegate=object())
    monkeypatch.setattr("edge_runtime.backends.litert.ctypes.CDLL", lambda library: plugin)

    def refuse(library, options):
        raise ValueError(f"Failed to load delegate from {library}\nno device")

    monkeypatch.setattr(litert_interpreter, "load_delegate", refuse)
    with pytest.raises(BackendUnavailable) as error:
        open_engine(GpuConfig(input_size=SIZE, options={"precision": "fp16"}), student)
    assert "refused to create its delegate with options {'precision': 'fp16'}" in str(error.value)
    assert "no device" in str(error.value) and CPU_HINT in str(error.value)


def _fake_pycoral(monkeypatch, make_interpreter) -> None:
    module = types.ModuleType("pycoral.utils.edgetpu")
    module.make_interpreter = make_interpreter
    for name in ("pycoral", "pycoral.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "pycoral.utils.edgetpu", module)


def test_edgetpu_uses_pycoral_when_it_is_installed(monkeypatch, student, frames):
    devices = []

    def make_interpreter(model, device=None):
        devices.append(device)
        # The CPU model stands in for a compiled one: no Edge TPU here.
        return litert_interpreter.Interpreter(model_content=model)

    _fake_pycoral(monkeypatch, make_interpreter)
    engine = open_engine(EdgeTpuConfig(input_size=SIZE, device="pci:0"), student)
    assert devices == ["pci:0"] and engine.name == "edgetpu"
    np.testing.assert_array_equal(engine.infer(frames[0]), _bare_litert_labels(student, frames)[0])


@pytest.mark.parametrize(
    "failure",
    [
        ValueError("Failed to load delegate from libedgetpu.so.1"),
        OSError("libedgetpu.so.1: cannot open shared object file"),
    ],
)
def test_pycoral_failing_to_open_the_edgetpu_is_unavailable(monkeypatch, student, failure):
    def make_interpreter(model, device=None):
        raise failure

    _fake_pycoral(monkeypatch, make_interpreter)
    with pytest.raises(BackendUnavailable) as error:
        open_engine(EdgeTpuConfig(input_size=SIZE), student)
    assert str(failure) in str(error.value) and CPU_HINT in str(error.value)


def test_missing_onnxruntime_names_the_package_and_the_other_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable) as error:
        open_engine(OnnxRuntimeConfig(input_size=SIZE), b"model")
    assert "onnxruntime is not installed" in str(error.value) and CPU_HINT in str(error.value)


def test_unavailable_onnx_providers_are_named_with_the_available_ones():
    config = OnnxRuntimeConfig(
        input_size=SIZE,
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    )
    with pytest.raises(BackendUnavailable) as error:
        open_engine(config, b"model")
    message = str(error.value)
    assert "['TensorrtExecutionProvider', 'CUDAExecutionProvider'] are not in" in message
    assert "'CPUExecutionProvider'" in message and "set [inference] providers" in message


def test_backends_load_their_runtime_only_when_a_model_is_opened():
    probe = (
        "import sys, edge_runtime.backends, edge_runtime.profile; "
        "print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in {'onnxruntime', 'ai_edge_litert', 'tflite_runtime', 'pycoral'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_profile_table_selects_the_config_class():
    adapter = TypeAdapter(InferenceConfig)
    config = adapter.validate_python({"backend": "gpu", "input_size": [513, 513]})
    assert type(config) is GpuConfig and config.library == "libtensorflowlite_gpu_delegate.so"
    with pytest.raises(BackendUnavailable, match=r"libtensorflowlite_gpu_delegate\.so"):
        open_engine(config, b"model")


# --- ONNX Runtime on the CPU: an ONNX export of the real student -------------------------------


@pytest.fixture(scope="session")
def student_onnx(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The student in float, exported to ONNX with the layout the onnxruntime back-end feeds:
    input "image" (1, 3, 513, 513) float32 = (pixel - 128) / 128, the real-valued input of the
    quantized model; output "scores" (1, 21, 513, 513) float32 logits."""
    import torch

    from cloud_trainer.student import import_tflite

    student = import_tflite(shared_dir / STUDENT).eval()
    student.fake_quant = False

    class NchwStudent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = student

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.student(image.permute(0, 2, 3, 1))  # the student takes NHWC

    example = torch.zeros(1, 3, *SIZE)
    # torch.export first, which fixes every shape: traced as it is, the student's shape arithmetic
    # makes the TorchScript exporter write resize matrices with out-of-range ScatterND indices.
    program = torch.export.export(NchwStudent(), (example,)).module()
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    with warnings.catch_warnings():
        # The TorchScript exporter's chatter (deprecation, constant folding); the test below
        # checks what it wrote.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            program,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["scores"],
            opset_version=17,
            training=torch.onnx.TrainingMode.PRESERVE,  # an exported program has no train()
        )
    return path


def test_onnxruntime_labels_equal_a_bare_session_and_agree_with_litert(
    student_onnx, student, frames
):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(
        str(student_onnx), options, providers=["CPUExecutionProvider"]
    )
    litert = open_engine(LiteRtConfig(input_size=SIZE), student)
    with open_engine(OnnxRuntimeConfig(input_size=SIZE), student_onnx) as engine:
        assert (engine.name, engine.input_size, engine.num_classes) == ("onnxruntime", SIZE, 21)
        agreement = []
        for image in frames:
            labels = engine.infer(image)
            nchw = ((image.astype(np.float32) - 128.0) / 128.0).transpose(2, 0, 1)[np.newaxis]
            (scores,) = session.run(None, {"image": nchw})
            np.testing.assert_array_equal(labels, scores[0].argmax(axis=0))
            agreement.append(float((labels == litert.infer(image)).mean()))
    assert min(agreement) >= MIN_ONNX_AGREEMENT, agreement


# --- normalization and decoding, on synthetic tensors -------------------------------------------


def _table(dtype, scale=0.0, zero_point=0, mean=128.0, std=128.0) -> np.ndarray:
    return normalization_table(
        TensorSpec((1, 2, 2, 3), np.dtype(dtype), scale, zero_point), mean, std
    )


def test_coral_uint8_input_is_exactly_the_raw_pixel():
    table = _table(np.uint8, scale=1 / 128, zero_point=128)
    assert table.dtype == np.uint8
    np.testing.assert_array_equal(table, np.arange(256))


def test_int8_input_is_quantized_with_its_own_scale_and_zero_point():
    # The int8 twin of the Coral input: same real range [-1, 1), zero point 0.
    np.testing.assert_array_equal(_table(np.int8, 1 / 128, 0), np.arange(256) - 128)
    # real = pixel, q = 2 * pixel - 3, clipped to int8
    table = _table(np.int8, scale=0.5, zero_point=-3, mean=0.0, std=1.0)
    assert table.dtype == np.int8
    assert table[[0, 1, 65, 66, 255]].tolist() == [-3, -1, 127, 127, 127]


def test_quantization_rounds_half_away_from_zero_like_tflite():
    table = _table(np.int8, scale=2.0, zero_point=0, mean=6.0, std=1.0)  # q = (pixel - 6) / 2
    assert table[[1, 3, 5, 7, 9, 11]].tolist() == [-3, -2, -1, 1, 2, 3]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float_input_is_the_normalized_pixel(dtype):
    table = _table(dtype)
    assert table.dtype == dtype
    assert table[[0, 128, 255]].tolist() == [-1.0, 0.0, np.float32(127 / 128).astype(dtype)]
    assert _table(dtype, mean=127.5, std=127.5)[[0, 255]].tolist() == [-1.0, 1.0]


def test_unquantized_integer_input_takes_the_normalized_value_as_it_is():
    np.testing.assert_array_equal(_table(np.uint8, mean=0.0, std=1.0), np.arange(256))


def test_unsupported_input_dtype_is_a_model_error():
    with pytest.raises(ModelError, match="dtype bool"):
        _table(np.bool_)


class _FixedOutput(TensorEngine):
    """An engine whose model returns a fixed tensor, to test everything around the model."""

    def __init__(self, inputs: TensorSpec, *outputs: np.ndarray, channels_last: bool = True):
        specs = [TensorSpec(o.shape, o.dtype, channels_last=channels_last) for o in outputs]
        super().__init__(LiteRtConfig(input_size=(2, 3)), [inputs], specs)
        self.output, self.seen = outputs[0], None

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        self.seen = tensor
        return self.output

    def _release(self) -> None:
        self.output = None


_IMAGE = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)


def test_nhwc_quantized_scores_are_decoded_by_argmax_over_classes():
    scores = np.zeros((1, 2, 3, 4), np.uint8)
    scores[0, 1, 2, 3] = scores[0, 0, 1, 2] = 200
    engine = _FixedOutput(TensorSpec((1, 2, 3, 3), np.dtype(np.uint8), 1 / 128, 128), scores)
    np.testing.assert_array_equal(engine.infer(_IMAGE), [[0, 2, 0], [0, 0, 3]])
    assert engine.num_classes == 4
    np.testing.assert_array_equal(engine.seen, _IMAGE[np.newaxis])


def test_nchw_float_scores_and_input_layout():
    scores = np.zeros((1, 5, 2, 3), np.float32)
    scores[0, 4, 1, 0] = 1.0
    inputs = TensorSpec((None, 3, None, None), np.dtype(np.float32), channels_last=False)
    engine = _FixedOutput(inputs, scores, channels_last=False)
    assert engine.input_size == (2, 3)  # free dimensions take the profile's size
    np.testing.assert_array_equal(engine.infer(_IMAGE), [[0, 0, 0], [4, 0, 0]])
    assert engine.seen.shape == (1, 3, 2, 3) and engine.seen.flags.c_contiguous
    np.testing.assert_array_equal(engine.seen[0, :, 1, 2], (_IMAGE[1, 2] - 128.0) / 128.0)


def test_label_map_output_is_used_as_it_is():
    labels = np.array([[[3, 1, 4], [1, 5, 9]]], np.int64)
    engine = _FixedOutput(TensorSpec((1, 2, 3, 3), np.dtype(np.uint8)), labels)
    np.testing.assert_array_equal(engine.infer(_IMAGE), labels[0])
    assert engine.num_classes is None


@pytest.mark.parametrize(
    ("inputs", "output", "message"),
    [
        (TensorSpec((2, 3, 3), np.dtype(np.uint8)), np.zeros((1, 2, 3), np.int64), "one NHWC"),
        (TensorSpec((1, 2, 3, 1), np.dtype(np.uint8)), np.zeros((1, 2, 3), np.int64), "C = 3"),
        (TensorSpec((4, 2, 3, 3), np.dtype(np.uint8)), np.zeros((1, 2, 3), np.int64), "N = 1"),
        (TensorSpec((1, 2, 3, 3), np.dtype(np.uint8)), np.zeros((1, 6), np.int64), "label map"),
        (TensorSpec((1, 2, 3, 3), np.dtype(np.uint8)), np.zeros((1, 2, 3), np.float32), "scores"),
        (TensorSpec((1, 2, 3, 3), np.dtype(np.uint8)), np.zeros((1, 2, 3, 1), np.uint8), "1 class"),
    ],
)
def test_tensors_that_are_not_an_image_segmenter_are_model_errors(inputs, output, message):
    with pytest.raises(ModelError, match=message):
        _FixedOutput(inputs, output)


def test_one_input_and_one_output():
    labels = np.zeros((1, 2, 3), np.int64)
    with pytest.raises(ModelError, match="one input and one output, it has 1 and 2"):
        _FixedOutput(TensorSpec((1, 2, 3, 3), np.dtype(np.uint8)), labels, labels)


def test_backend_config_is_abstract():
    with pytest.raises(TypeError):
        BackendConfig(backend="x", input_size=SIZE)
