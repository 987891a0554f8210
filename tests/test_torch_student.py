"""The project's own torch student (cloud_trainer.student.torch_student): its architecture, that
it trains on teacher labels, and its ONNX export on the device's ONNX Runtime back-end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from cloud_trainer.export.bench import teacher_labels
from cloud_trainer.export.calibration import load_frames
from cloud_trainer.export.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx
from cloud_trainer.export.verify import device_labels
from cloud_trainer.student.torch_student import (
    DeepLabV3MobileNetV2,
    StudentConfig,
    distill,
    load_checkpoint,
    predict_labels,
    save_checkpoint,
)

TEACHER = "models/coral/deeplabv3_mnv2_pascal_quant.tflite"
VIDEO = "videos/vtest.avi"
SMALL = StudentConfig(width=0.35, input_size=(129, 129))


def test_default_student_matches_the_coral_dm05_shape():
    model = DeepLabV3MobileNetV2()
    assert model.config.width == 0.5 and model.config.input_size == (513, 513)
    # 0.70 M parameters (BatchNorm included), output stride 16: 513 -> 33
    assert 690_000 < model.parameter_count < 710_000
    with torch.no_grad():
        assert model.backbone(torch.zeros(1, 3, 513, 513)).shape == (1, 160, 33, 33)


def test_width_multiplier_scales_channels_and_output_keeps_the_input_size():
    narrow, wide = DeepLabV3MobileNetV2(SMALL), DeepLabV3MobileNetV2(StudentConfig(width=1.0))
    assert narrow.backbone.out_channels == 112 and wide.backbone.out_channels == 320
    assert narrow.parameter_count < wide.parameter_count
    narrow.eval()
    with torch.no_grad():
        assert narrow(torch.zeros(2, 3, 129, 129)).shape == (2, 21, 129, 129)
        assert narrow(torch.zeros(1, 3, 100, 140)).shape == (1, 21, 100, 140)  # any size runs


def test_checkpoint_round_trip(tmp_path):
    model = DeepLabV3MobileNetV2(SMALL).eval()
    path = save_checkpoint(model, tmp_path / "student.pt")
    loaded = load_checkpoint(path)
    assert loaded.config == SMALL and not loaded.training
    x = torch.rand(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.fixture(scope="module")
def teacher_labelled(shared_dir):
    """Frames of the street video at 129x129 and the teacher's labels for them (it runs at its
    513x513; with aligned corners, every 4th label of 513 sits on a pixel of 129)."""
    video = shared_dir / VIDEO
    labels = teacher_labels(shared_dir / TEACHER, video, (129, 129), 12)
    return load_frames(video, (129, 129), 12), labels


def test_a_few_steps_on_teacher_labels_reduce_the_loss(teacher_labelled):
    frames, labels = teacher_labelled
    assert {0, 15} <= set(np.unique(labels).tolist())  # background and people
    torch.manual_seed(0)
    model = DeepLabV3MobileNetV2(SMALL)
    losses = distill(model, frames, labels, 12, batch_size=2, lr=3e-3)
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    assert not model.training
    assert (predict_labels(model, frames) == labels).mean() > 0.9


def test_onnx_export_is_checked_and_runs_on_the_jetson_backend(tmp_path, teacher_labelled):
    frames, _ = teacher_labelled
    torch.manual_seed(1)
    model = DeepLabV3MobileNetV2(SMALL)
    distill(model, frames, np.zeros((len(frames), 129, 129)), 2)  # BatchNorm statistics
    path = export_onnx(model, tmp_path / "student.onnx", (129, 129))
    graph = onnx.load(path)
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert [i.name for i in graph.graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.graph.output] == [OUTPUT_NAME]
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 129, 129]  # static: no dynamic batch
    labels = device_labels(path.read_bytes(), frames[:3])  # OnnxRuntimeConfig, as on a Jetson
    np.testing.assert_array_equal(labels, predict_labels(model, frames[:3]))
