"""The regression gate's rule and how many samples a phase leaves out (cloud_trainer.ams.gate);
a session gating a phase on the real models is in test_session."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_trainer.ams.gate import GateConfig, judge
from cloud_trainer.ams.judging import mean_miou
from cloud_trainer.sample_buffer import Sample


def _sample(labels: np.ndarray) -> Sample:
    return Sample(0.0, np.zeros((*labels.shape, 3), np.uint8), labels)


def test_the_score_is_the_mean_per_frame_miou_against_the_teacher():
    truth = np.zeros((4, 4), np.uint8)
    truth[:2] = 1  # half class 1
    right, wrong = truth.copy(), np.zeros_like(truth)  # wrong: IoU 0.5 on class 0, 0 on 1
    samples = [_sample(truth)] * 2
    assert mean_miou([right, right], samples, (0, 1)) == 1.0
    assert mean_miou([right, wrong], samples, (0, 1)) == pytest.approx((1.0 + 0.25) / 2)
    with pytest.raises(ValueError):
        mean_miou([right], samples, (0, 1))  # one map per sample


def test_a_model_passes_unless_it_loses_more_than_the_margin():
    assert judge(1.0, 1.0, margin=0.0).passed
    worse = judge(0.625, 1.0, margin=0.0)
    assert (worse.candidate, worse.running, worse.passed) == (0.625, 1.0, False)
    assert judge(0.625, 1.0, margin=0.375).passed
    assert not judge(0.625, 1.0, margin=0.37).passed
    assert judge(1.0, 0.625, margin=0.0).passed


def test_the_judge_scores_a_file_as_the_device_labels_with_it(shared_dir):
    from cloud_trainer.ams.judging import FileJudge
    from edge_runtime.backends.litert import LiteRtConfig
    from edge_runtime.sources import open_source

    data = (shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite").read_bytes()
    with open_source(str(shared_dir / "videos/vtest.avi")) as source:
        images = [f.rgb(513, 513) for _, f in zip(range(2), source, strict=False)]
    engine = LiteRtConfig(threads=2).open(data)
    samples = [Sample(float(i), rgb, engine.infer(rgb)) for i, rgb in enumerate(images)]
    engine.close()
    judge_ = FileJudge(threads=2)
    assert judge_.score(data, samples, (0, 15)) == 1.0  # its own labels: full agreement
    other = [Sample(s.timestamp, s.rgb, np.zeros_like(s.labels)) for s in samples]
    assert judge_.score(data, other, (0, 15)) < 1.0
    judge_.close()


def test_a_phase_holds_out_only_new_samples_at_most_half_and_none_of_one():
    gate = GateConfig(enabled=True, holdout=4)
    buffered = (0, 1, 2, 3, 8, 9, 100)
    assert [gate.held_out(100, n) for n in buffered] == [0, 0, 1, 1, 4, 4, 4]
    # only what arrived since the last phase: at 0.1 fps, one frame, trained on next phase
    assert [gate.held_out(fresh, 100) for fresh in (0, 1, 3, 10)] == [0, 1, 3, 4]
    assert GateConfig().held_out(100, 100) == 0  # off by default


def test_the_judged_file_is_the_file_the_update_makes(shared_dir):
    import torch

    from cloud_trainer.mirror import ModelMirror
    from cloud_trainer.student import import_tflite
    from shared_schema.messages import UpdateFormat

    initial = (shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite").read_bytes()
    student = import_tflite(initial)
    with torch.no_grad():
        list(student.parameters())[-1][3] += 0.5  # a class's bias, several grid steps
    for fmt in (UpdateFormat.QDELTA, UpdateFormat.ZPATCH):
        mirror = ModelMirror(initial, device_id="d")
        judged = mirror.candidate(student)
        assert judged != initial
        mirror.advance(student, fmt)
        assert mirror.data == judged, fmt
