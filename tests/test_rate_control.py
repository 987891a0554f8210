"""ASR (eq. 1), ATR (eq. 2) and the φ-score, driven by synthetic sequences."""

import numpy as np
import pytest

from cloud_trainer.ams.asr import AdaptiveSamplingRate, AsrConfig, phi_score
from cloud_trainer.ams.atr import AdaptiveTrainingRate, AtrConfig
from shared_schema.metrics import ClassSubset, miou


def test_miou_over_a_class_subset():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    prediction = np.array([[0, 1, 1, 1], [0, 0, 2, 1]])
    # class 0: 3/4, class 1: 3/5, class 2 absent from target but predicted: 0/1
    assert miou(prediction, target, [0, 1]) == pytest.approx((3 / 4 + 3 / 5) / 2)
    assert miou(prediction, target, [0, 1, 2]) == pytest.approx((3 / 4 + 3 / 5 + 0) / 3)
    assert miou(target, target, [0, 1, 7]) == 1.0  # 7 is in neither map: left out
    assert miou(target, target, [9]) == 1.0


def test_class_subset_keeps_background_and_classes_above_half_a_percent():
    subset = ClassSubset(num_classes=21)
    labels = np.zeros(1000, np.int64)
    labels[:20] = 15  # 2 %
    labels[20:24] = 3  # 0.4 %: below the threshold
    subset.observe(labels)
    assert subset.classes == (0, 15)
    assert subset.seen == (0, 3, 15)  # below the scoring threshold, still trained on
    assert ClassSubset(21).classes == (0,)


def test_phi_is_one_minus_consecutive_agreement():
    a = np.zeros((4, 4), np.int64)
    b = a.copy()
    b[:2] = 15
    assert phi_score(a, a, [0, 15]) == 0.0
    assert phi_score(a, b, [0, 15]) == pytest.approx(1 - (0.5 + 0.0) / 2)


def _drive(asr: AdaptiveSamplingRate, phis_per_interval):
    rates = []
    for phis in phis_per_interval:
        for phi in phis:
            asr.observe(phi)
        rates.append(asr.update())
    return rates


def test_asr_follows_eq1_and_clips():
    cfg = AsrConfig(initial_fps=0.5, phi_target=0.4, eta=2.0)
    rates = _drive(AdaptiveSamplingRate(cfg), [[0.5, 0.5], [0.6], [0.9], [0.1, 0.3], [0.0] * 5])
    # 0.5 + 2(0.5-0.4) = 0.7; +0.4 = 1.1 → 1.0; +1.0 → 1.0; + 2(0.2-0.4) = 0.6; -0.8 → 0.1
    assert rates == pytest.approx([0.7, 1.0, 1.0, 0.6, 0.1])


def test_asr_converges_when_phi_grows_with_the_sampling_interval():
    """A scene whose labels drift at a fixed speed: φ is proportional to 1/r. The rate settles
    where φ = φ_target."""
    cfg = AsrConfig(initial_fps=1.0, phi_target=0.4, eta=0.5)
    asr = AdaptiveSamplingRate(cfg)
    drift_per_second = 0.1
    for _ in range(200):
        asr.observe(min(1.0, drift_per_second / asr.rate_fps))
        asr.update()
    assert asr.rate_fps == pytest.approx(drift_per_second / 0.4, abs=0.01)


def test_asr_holds_without_samples_and_when_disabled():
    asr = AdaptiveSamplingRate(AsrConfig(initial_fps=0.3))
    assert asr.update() == 0.3
    off = AdaptiveSamplingRate(AsrConfig(initial_fps=0.3, enabled=False))
    off.observe(1.0)
    assert off.update() == 0.3


def test_asr_state_round_trip():
    asr = AdaptiveSamplingRate(AsrConfig(initial_fps=0.5))
    asr.observe(0.9)
    restored = AdaptiveSamplingRate()
    restored.load_state_dict(asr.state_dict())
    assert restored.update() == asr.update()


def test_atr_trajectory_with_hysteresis():
    atr = AdaptiveTrainingRate(AtrConfig(tau_min_s=10, step_s=2, tau_max_s=16))
    rates = [1.0, 0.2, 0.3, 0.3, 0.1, 0.1, 0.3, 0.4, 0.2]
    trajectory = [atr.update(r) for r in rates]
    # enter at 0.2; 0.3 is between the thresholds so slow-down holds; capped at 16; exit at 0.4
    assert trajectory == [10, 12, 14, 16, 16, 16, 16, 10, 12]


def test_atr_driven_by_asr_on_a_still_scene():
    asr = AdaptiveSamplingRate(AsrConfig(initial_fps=1.0, eta=2.0))
    atr = AdaptiveTrainingRate()
    t_updates = []
    for _ in range(12):
        asr.observe(0.05)  # a still scene: consecutive labels almost identical
        t_updates.append(atr.update(asr.update()))
    assert asr.rate_fps == 0.1
    assert t_updates[0] == 10 and t_updates[-1] > 20 and atr.slowdown


def test_configs_reject_inconsistent_bounds():
    with pytest.raises(ValueError):
        AsrConfig(min_fps=0.5, initial_fps=0.2)
    with pytest.raises(ValueError):
        AtrConfig(enter_below_fps=0.5, exit_above_fps=0.3)
