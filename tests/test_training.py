"""Training phases on the real student and teacher, and the mirror's updates: what the device
runs after applying them is what the trainer trained."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from cloud_trainer.ams.training import TrainingConfig, new_optimizer, train_phase
from cloud_trainer.mirror import ModelMirror
from cloud_trainer.sample_buffer import Sample, SampleBuffer, resize_labels
from cloud_trainer.student import import_tflite
from cloud_trainer.teacher import TeacherConfig, load_teacher
from edge_runtime.sources import open_source
from shared_schema.envelope import sha256_hex
from shared_schema.messages import UpdateFormat
from shared_schema.metrics import ClassSubset
from shared_schema.signing import Signer, signing_payload, verify
from shared_schema.update_formats import apply_update

STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
TEACHER = "models/coral/deeplabv3_mnv2_pascal_quant.tflite"
RES = (161, 161)


@pytest.fixture(scope="module")
def frames(shared_dir):
    with open_source(str(shared_dir / "videos/vtest.avi")) as source:
        picked = [f for i, f in zip(range(200), source, strict=False) if i % 25 == 0]
    return picked


@pytest.fixture(scope="module")
def labelled(shared_dir, frames):
    teacher = load_teacher(TeacherConfig(model=shared_dir / TEACHER))
    height, width = teacher.input_size
    labels = teacher.label(np.stack([f.rgb(width, height) for f in frames]))
    subset = ClassSubset(21)
    buffer = SampleBuffer(horizon_s=240)
    for frame, label in zip(frames, labels, strict=True):
        subset.observe(label)
        buffer.add(
            Sample(
                frame.timestamp,
                frame.rgb(RES[1], RES[0]),
                resize_labels(label, *RES).astype(np.uint8),
            )
        )
    return buffer, subset.classes, labels


def test_teacher_labels_real_frames(labelled):
    _, classes, labels = labelled
    assert labels.shape[1:] == (513, 513)
    assert 15 in classes and 0 in classes  # vtest: pedestrians on background


def test_phases_lower_the_loss(shared_dir, labelled):
    buffer, classes, _ = labelled
    student = import_tflite(shared_dir / STUDENT)
    config = TrainingConfig(gamma=0.2, iterations=5, batch_size=2, resolution=RES, lr=3e-3)
    optimizer = new_optimizer(student, config)
    rng = np.random.default_rng(0)
    results = [train_phase(student, optimizer, buffer, classes, config, rng) for _ in range(4)]
    assert results[-1].last_loss < 0.8 * results[0].first_loss
    assert optimizer.phase == 4 and optimizer.step_count == 20


def test_the_phase_lr_warms_up_then_decays_by_the_cosine():
    import math

    from cloud_trainer.ams.training import phase_lr

    flat = TrainingConfig(lr=1e-3, iterations=10)
    assert [phase_lr(flat, k) for k in range(10)] == [1e-3] * 10
    warm = TrainingConfig(lr=1e-3, iterations=10, warmup_steps=3)
    warmed = [phase_lr(warm, k) for k in range(5)]
    assert warmed == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    cosine = TrainingConfig(lr=1e-3, iterations=10, warmup_steps=2, decay="cosine")
    # after the warm-up, η = ½ η_max (1 + cos(π t / T)), t counted from the warm-up's end
    for k in range(2, 10):
        t = (k - 2) / 8
        assert phase_lr(cosine, k) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * t)))
    assert phase_lr(cosine, 9) < phase_lr(cosine, 5) < phase_lr(cosine, 2)


def test_the_loss_counts_other_classes_only_without_the_subset(shared_dir, labelled):
    buffer, _, _ = labelled
    first = {}
    for subset in (True, False):
        student = import_tflite(shared_dir / STUDENT)
        config = TrainingConfig(iterations=1, batch_size=2, resolution=RES, class_subset=subset)
        optimizer = new_optimizer(student, config)
        # only class 15 counts: the loss on the subset differs from the loss on all classes
        result = train_phase(student, optimizer, buffer, (15,), config, np.random.default_rng(3))
        first[subset] = result.first_loss
    assert first[True] != pytest.approx(first[False], rel=1e-3)


def _bare_labels(model: bytes, rgb: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=model, num_threads=2)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(inp["index"], rgb[None])
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])[0]


@pytest.mark.slow
def test_device_runs_what_the_trainer_trained(shared_dir, labelled, frames):
    """The qdelta-patched TFLite file agrees with the trainer's fake-quant student."""
    buffer, classes, _ = labelled
    initial = (shared_dir / STUDENT).read_bytes()
    student = import_tflite(initial)
    config = TrainingConfig(gamma=0.05, iterations=4, batch_size=2, resolution=RES)
    optimizer = new_optimizer(student, config)
    mirror = ModelMirror(initial, device_id="cam-1")
    device_file = initial
    for _ in range(2):
        train_phase(student, optimizer, buffer, classes, config, np.random.default_rng(1))
        out = mirror.advance(student, UpdateFormat.QDELTA)
        assert out.msg.base_sha256 == sha256_hex(device_file)
        device_file = apply_update(out.msg.format, device_file, out.body)
        assert sha256_hex(device_file) == out.msg.result_sha256 == mirror.sha256
    assert mirror.version == 2 and device_file != initial
    agree = []
    for frame in frames[:3]:
        rgb = frame.rgb(513, 513)
        trainer_labels = student.labels(rgb[None])[0].numpy()
        agree.append(np.mean(trainer_labels == _bare_labels(device_file, rgb)))
    assert min(agree) >= 0.995, agree


@pytest.mark.parametrize("fmt", list(UpdateFormat))
def test_every_format_reproduces_the_mirror_on_the_device(shared_dir, labelled, fmt):
    buffer, classes, _ = labelled
    initial = (shared_dir / STUDENT).read_bytes()
    student = import_tflite(initial)
    config = TrainingConfig(gamma=0.05, iterations=2, batch_size=1, resolution=RES)
    optimizer = new_optimizer(student, config)
    train_phase(student, optimizer, buffer, classes, config, np.random.default_rng(2))
    mirror = ModelMirror(initial, device_id="cam-1")
    out = mirror.advance(student, fmt, mask=optimizer.mask)
    assert apply_update(fmt, initial, out.body) == mirror.data
    assert out.msg.new_version == 1 and out.msg.format == fmt


def test_resync_from_an_older_version_and_full_model(shared_dir, labelled, tmp_path):
    from shared_schema.signing import save_keypair

    buffer, classes, _ = labelled
    initial = (shared_dir / STUDENT).read_bytes()
    key = save_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    student = import_tflite(initial)
    config = TrainingConfig(gamma=0.05, iterations=2, batch_size=1, resolution=RES)
    optimizer = new_optimizer(student, config)
    mirror = ModelMirror(initial, device_id="cam-1", history=3, signer=Signer(key))
    for _ in range(4):
        train_phase(student, optimizer, buffer, classes, config, np.random.default_rng(3))
        mirror.advance(student, UpdateFormat.QDELTA)
    assert sorted(mirror.versions()) == [2, 3, 4]
    assert mirror.update_since(0, UpdateFormat.QDELTA) is None  # too old: full model
    resync = mirror.update_since(2, UpdateFormat.QDELTA)
    assert apply_update(resync.msg.format, mirror.versions()[2], resync.body) == mirror.data
    full = mirror.full_model()
    assert full.body == mirror.data and full.msg.version == 4
    for out in (resync, full):
        payload = signing_payload("cam-1", out.msg, sha256_hex(out.body))
        assert verify(key.public_key(), payload, out.msg.signature)
    assert mirror.find(sha256_hex(mirror.versions()[3])) == 3
