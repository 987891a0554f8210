"""KL distillation from the teacher's scores (training.distillation = "kl"): the loss against
its equation, the scores' crops, the torch teacher's scores, and a session on the real models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cloud_trainer.ams.training import kl_loss
from cloud_trainer.config import TrainerConfig
from cloud_trainer.sample_buffer import Sample, SampleBuffer, soft_logits
from tests.test_session import _new_session, _restarted, _run, _updates, envelope, hello
from tests.trainer_helpers import trainer_raw, vtest_segments

TEACHER = "models/coral/deeplabv3_mnv2_pascal_quant.tflite"


def test_kl_is_zero_for_the_teachers_own_scores_and_follows_the_equation():
    torch.manual_seed(0)
    teacher = torch.randn(1, 3, 2, 2)
    labels = teacher.argmax(1)
    assert kl_loss(teacher, teacher, labels, None, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(1, 3, 2, 2)
    for temperature in (1.0, 2.0):
        p = F.softmax(teacher / temperature, 1)
        q = F.softmax(student / temperature, 1)
        expected = temperature**2 * (p * (p / q).log()).sum(1).mean()
        got = kl_loss(student, teacher, labels, None, temperature)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_over_the_subset_renormalises_and_ignores_other_pixels():
    teacher = torch.tensor([[2.0, 0.0, 5.0], [0.0, 1.0, -1.0]]).T.reshape(1, 3, 1, 2)
    student = torch.zeros(1, 3, 1, 2)
    labels = torch.tensor([[[2, 1]]])  # the first pixel is class 2, outside (0, 1): ignored
    p = F.softmax(torch.tensor([0.0, 1.0]), 0)  # the second pixel over classes 0 and 1
    expected = (p * (p / 0.5).log()).sum()
    assert kl_loss(student, teacher, labels, (0, 1), 1.0).item() == pytest.approx(expected.item())
    none = torch.tensor([[[2, 2]]])
    assert kl_loss(student, teacher, none, (0, 1), 1.0).item() == 0.0  # nothing to learn from


def test_the_scores_are_cropped_with_the_same_window_as_the_frame():
    height = width = 17
    coarse = np.zeros((2, 3, 3), np.float16)
    coarse[0] = np.arange(3)[None, :]  # class 0's logit grows to the right, class 1's is flat
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 1] = np.arange(width)[None, :]  # the column, to find the crop
    buffer = SampleBuffer(horizon_s=10.0)
    buffer.add(Sample(0.0, rgb, np.zeros((height, width), np.uint8), coarse))
    batch = buffer.batch(8, np.random.default_rng(0), crop=(5, 5))
    full = soft_logits(coarse, height, width)
    assert full.shape == (2, height, width) and full[0, 0, -1] == pytest.approx(2.0)
    for rgb_crop, soft in zip(batch.rgb, batch.soft, strict=True):
        left = int(rgb_crop[0, 0, 1])
        assert torch.allclose(soft[0, 0], full[0, 0, left : left + 5])
    plain = SampleBuffer(10.0)
    plain.add(Sample(0.0, rgb, np.zeros((height, width), np.uint8)))
    assert plain.batch(1, np.random.default_rng(0)).soft is None


@pytest.fixture(scope="module")
def torch_teacher(shared_dir):
    from cloud_trainer.teacher import TeacherConfig, load_teacher

    return load_teacher(TeacherConfig(kind="torch", model=shared_dir / TEACHER))


def test_the_torch_teachers_scores_give_its_labels(shared_dir, torch_teacher):
    from edge_runtime.sources import open_source

    with open_source(str(shared_dir / "videos/vtest.avi")) as source:
        rgb = np.stack([f.rgb(513, 513) for _, f in zip(range(2), source, strict=False)])
    scores = torch_teacher.scores(rgb)
    assert scores.shape == (2, 21, math.ceil(513 / 8), math.ceil(513 / 8))
    assert scores.dtype == np.float16
    labels = torch_teacher.label(rgb)
    for coarse, truth in zip(scores, labels, strict=True):
        agree = np.mean(soft_logits(coarse, 513, 513).argmax(0).numpy() == truth)
        assert agree > 0.95, agree


def test_kl_needs_a_teacher_that_scores(tmp_path):
    raw = trainer_raw(tmp_path, distillation="kl")
    with pytest.raises(ValueError, match='kind = "torch"'):
        TrainerConfig.model_validate(raw)
    raw["teacher"]["kind"] = "torch"
    assert TrainerConfig.model_validate(raw).training.distillation == "kl"


def test_a_kl_session_trains_on_the_scores_and_keeps_them_across_a_restart(tmp_path, shared_dir):
    segments = vtest_segments(shared_dir)
    raw = trainer_raw(tmp_path, distillation="kl")
    raw["teacher"]["kind"] = "torch"
    session = _new_session(tmp_path, TrainerConfig.model_validate(raw))
    _run(session, hello(session.mirror.sha256))
    (update,) = _updates(_run(session, envelope(*segments[0])))
    assert update.msg.new_version == 1
    assert all(
        s.soft is not None and s.soft.shape == (21, 65, 65) for s in session.buffer.samples()
    )
    session.save()
    resumed = _restarted(session)
    assert resumed.restore()
    before, after = session.buffer.samples(), resumed.buffer.samples()
    assert len(after) == len(before) == 3
    assert all(np.array_equal(a.soft, b.soft) for a, b in zip(after, before, strict=True))


def test_kl_trains_on_the_labels_of_samples_that_have_no_scores(shared_dir):
    from cloud_trainer.ams.training import TrainingConfig, new_optimizer, train_phase
    from cloud_trainer.student import import_tflite

    student = import_tflite(shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite")
    labels = np.zeros((65, 65), np.uint8)
    labels[20:40, 20:40] = 15
    buffer = SampleBuffer(10.0)  # restored from a checkpoint written before KL was turned on
    buffer.add(Sample(0.0, np.full((65, 65, 3), 128, np.uint8), labels))
    config = TrainingConfig(iterations=1, batch_size=1, resolution=(65, 65), distillation="kl")
    result = train_phase(
        student, new_optimizer(student, config), buffer, (0, 15), config, np.random.default_rng(0)
    )
    assert math.isfinite(result.first_loss) and result.first_loss > 0
