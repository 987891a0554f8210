import numpy as np
import pytest

from edge_runtime.sampler import Sampler


def _sampled(sampler: Sampler, timestamps) -> list[float]:
    return [t for t in timestamps if sampler.offer(t)]


def test_one_fps_from_ten_fps_keeps_every_tenth_frame():
    timestamps = [i / 10 for i in range(600)]
    kept = _sampled(Sampler(1.0), timestamps)
    assert kept == pytest.approx([float(s) for s in range(60)])


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.7, 1.0])
def test_rate_holds_over_a_minute(rate):
    kept = _sampled(Sampler(rate), [i / 30 for i in range(30 * 60)])
    assert abs(len(kept) - rate * 60) <= 1
    gaps = np.diff(kept)
    assert gaps.min() >= 1 / rate - 1 / 30 - 1e-9


def test_jittered_timestamps_keep_the_average_rate():
    rng = np.random.default_rng(0)
    timestamps = np.cumsum(rng.uniform(0.02, 0.05, size=6000))  # ~28 fps with jitter
    kept = _sampled(Sampler(0.5), timestamps)
    duration = timestamps[-1] - timestamps[0]
    assert abs(len(kept) - 0.5 * duration) <= 1


def test_rate_is_clipped_to_the_device_bounds():
    sampler = Sampler(5.0, min_fps=0.1, max_fps=1.0)
    assert sampler.rate_fps == 1.0
    assert sampler.set_rate(0.01) == 0.1
    assert sampler.set_rate(0.4) == 0.4


def test_rate_change_takes_effect_from_the_last_sample():
    sampler = Sampler(1.0)
    timestamps = [i / 10 for i in range(300)]
    first = _sampled(sampler, timestamps[:100])  # 0 .. 9.9 s at 1 fps
    sampler.set_rate(0.2)
    rest = _sampled(sampler, timestamps[100:])
    assert first == pytest.approx([float(s) for s in range(10)])
    assert rest == pytest.approx([14.0, 19.0, 24.0, 29.0])


def test_no_burst_after_a_gap():
    sampler = Sampler(1.0)
    kept = _sampled(sampler, [0.0, 0.5, 1.0, 30.0, 30.2, 30.5, 31.0, 31.5, 32.0])
    assert kept == [0.0, 1.0, 30.0, 31.0, 32.0]


def test_bounds_are_validated():
    with pytest.raises(ValueError):
        Sampler(1.0, min_fps=2.0, max_fps=1.0)


def test_a_scene_cut_samples_its_frame_and_goes_to_the_maximum_rate():
    sampler = Sampler(0.1, min_fps=0.1, max_fps=2.0)
    assert _sampled(sampler, [i / 10 for i in range(0, 35)]) == [0.0]  # next due at 10 s
    sampler.set_rate(0.1)  # a control just before the cut (moves the next sample to 10 s)
    assert sampler.offer(3.5, cut=True) and sampler.rate_fps == 2.0
    kept = _sampled(sampler, [i / 10 for i in range(36, 60)])
    assert kept == pytest.approx([4.0, 4.5, 5.0, 5.5])
    assert sampler.set_rate(0.5) == 0.5  # the trainer's next control sets it again
    assert _sampled(sampler, [i / 10 for i in range(60, 80)]) == pytest.approx([7.5])
