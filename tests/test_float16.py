"""The float16 device path: the quantized student in TFLite's float16 form, trained in float,
updated in fp16 (ams-fp16) or as qdelta of its 16-bit words, on the real model and frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloud_trainer.config import TrainerConfig
from cloud_trainer.mirror import ModelMirror
from cloud_trainer.session import Session
from cloud_trainer.student import import_tflite, stored_weights, student_from
from cloud_trainer.student.float16 import float16_model
from cloud_trainer.teacher import load_teacher
from edge_runtime.backends.litert import LiteRtConfig
from edge_runtime.sources import open_source
from shared_schema.envelope import decode, encode, sha256_hex
from shared_schema.messages import Hello, Model, Update, UpdateFormat
from shared_schema.tflite_file import FLOAT16, TFLiteFile
from shared_schema.update_formats import UpdateFormatError, ams_fp16, apply_update, qdelta
from tests.trainer_helpers import trainer_raw, vtest_segments


@pytest.fixture(scope="module")
def int8(shared_dir) -> bytes:
    return (shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite").read_bytes()


@pytest.fixture(scope="module")
def fp16(int8) -> bytes:
    return float16_model(int8)


@pytest.fixture(scope="module")
def frames(shared_dir) -> list[np.ndarray]:
    with open_source(str(shared_dir / "videos/vtest.avi")) as source:
        picked = [f for i, f in zip(range(300), source, strict=False) if i % 100 == 0]
    return [f.rgb(513, 513) for f in picked]


def _labels(data: bytes, frames: list[np.ndarray]) -> list[np.ndarray]:
    engine = LiteRtConfig(threads=2).open(data)
    try:
        return [engine.infer(f) for f in frames]
    finally:
        engine.close()


def test_the_float16_form_holds_the_dequantized_constants_at_the_same_indices(int8, fp16):
    quantized, floats = TFLiteFile(int8), TFLiteFile(fp16)
    assert [t.index for t in floats.trainable] == [t.index for t in quantized.trainable]
    assert floats.input_size == quantized.input_size and floats.num_classes == 21
    assert floats.tensor(floats.inputs[0]).dtype == np.uint8  # the device feeds the same image
    for q, f in zip(quantized.trainable, floats.trainable, strict=True):
        assert f.dtype == FLOAT16 and f.shape == q.shape and f.is_float
        expected = q.dequantize(quantized.values(q)).astype(FLOAT16)
        assert np.array_equal(floats.values(f), expected), q.name


def test_litert_runs_the_float16_form_as_the_int8_model_labels(int8, fp16, frames):
    for a, b in zip(_labels(int8, frames), _labels(fp16, frames), strict=True):
        assert b.shape == a.shape and (a == b).mean() > 0.99  # float arithmetic, same weights


def test_the_trainers_float_student_is_the_network_the_device_runs(int8, fp16, frames):
    student = student_from(int8, fp16)
    student.fake_quant = False
    with torch.no_grad():
        torch_labels = [student.labels(f[None])[0].numpy() for f in frames]
    for ours, device in zip(torch_labels, _labels(fp16, frames), strict=True):
        assert (ours == device).mean() > 0.99
    # unchanged master weights give back the file's values bit for bit
    layout = TFLiteFile(fp16)
    for index, values in stored_weights(student, layout).items():
        assert values.tobytes() == layout.values(layout.by_index[index]).tobytes()


def test_a_student_of_the_int8_file_itself_is_the_plain_import(int8):
    a, b = student_from(int8, int8), import_tflite(int8)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)


def test_a_file_of_another_graph_is_refused(int8, shared_dir):
    teacher = (shared_dir / "models/coral/deeplabv3_mnv2_pascal_quant.tflite").read_bytes()
    with pytest.raises(ValueError, match="not a constant of the student's graph"):
        student_from(int8, teacher)


def _trained_a_little(int8: bytes) -> torch.nn.Module:
    student = student_from(int8, float16_model(int8))
    student.fake_quant = False
    with torch.no_grad():
        for p in list(student.parameters())[:6]:
            p.add_(torch.randn_like(p) * 1e-3)
    return student


def test_qdelta_of_float16_words_rebuilds_the_mirrors_file_exactly(int8, fp16):
    student = _trained_a_little(int8)
    mirror = ModelMirror(fp16, device_id="cam")
    update = mirror.advance(student, UpdateFormat.QDELTA)
    result = apply_update(UpdateFormat.QDELTA, fp16, update.body)
    assert result == mirror.data and sha256_hex(result) == update.msg.result_sha256
    layout = TFLiteFile(result)
    for index, values in stored_weights(student, layout).items():
        assert np.array_equal(layout.values(layout.by_index[index]), values)


def test_ams_fp16_writes_the_float16_values_themselves(int8, fp16):
    layout = TFLiteFile(fp16)
    tensor = layout.trainable[3]
    real = np.array([0.123456, -7.5, 1e6])  # the last one beyond float16: the largest finite
    body = ams_fp16.encode(layout, {tensor.index: (np.arange(3), real)})
    values = TFLiteFile(apply_update(UpdateFormat.AMS_FP16, fp16, body)).values(tensor)
    limit = np.finfo(FLOAT16).max
    assert np.array_equal(values[:3], np.array([0.123456, -7.5, limit], FLOAT16))


def test_a_qdelta_that_would_make_a_float16_nan_is_refused(fp16):
    layout = TFLiteFile(fp16)
    tensor = layout.trainable[0]
    nan = layout.values(tensor).copy()
    nan[0] = np.float16("nan")
    body = qdelta.encode(layout, {tensor.index: nan})
    with pytest.raises(UpdateFormatError, match="non-finite"):
        apply_update(UpdateFormat.QDELTA, fp16, body)


def _float16_session(tmp_path) -> Session:
    raw = trainer_raw(tmp_path)
    raw["student"]["precision"] = "float16"
    raw["updates"]["format"] = "ams-fp16"
    config = TrainerConfig.model_validate(raw)
    initial = config.student.model.read_bytes()
    return Session("cam-1", config, load_teacher(config.teacher), initial, directory=tmp_path / "s")


def _envelope(msg, body=b""):
    return decode(encode(msg, device_id="cam-1", seq=next(_SEQ), boot="2" * 16, body=body))


_SEQ = iter(range(10**6))


def test_a_float16_session_sends_the_float_file_then_fp16_updates_to_it(tmp_path, shared_dir, int8):
    session = _float16_session(tmp_path)
    assert session.mirror.data == float16_model(int8) and not session.student.fake_quant
    hello = Hello(profile="cpu", device_class="cpu", runtime_version="0", backend="litert",
                  input_size=(513, 513), model_sha256=sha256_hex(int8),
                  update_formats=(UpdateFormat.QDELTA, UpdateFormat.AMS_FP16))  # fmt: skip
    session.deliver(_envelope(hello))
    out = [o for _ in range(3) if session.has_work for o in session.step()]
    (model,) = [o for o in out if isinstance(o.msg, Model)]  # flashed with int8: the full file
    device_file = model.body
    assert device_file == session.mirror.data
    msg, h264 = vtest_segments(shared_dir)[0]
    session.deliver(_envelope(msg, h264))
    replies = []
    while session.has_work:
        replies += session.step()
    (update,) = [o for o in replies if isinstance(o.msg, Update)]
    assert update.msg.format == UpdateFormat.AMS_FP16
    device_file = apply_update(update.msg.format, device_file, update.body)
    assert sha256_hex(device_file) == update.msg.result_sha256 == session.mirror.sha256
    assert TFLiteFile(device_file).trainable[0].is_float
