"""The trainer's sample buffer: the horizon, uniform draws, and crops that keep frame and labels
aligned at the scale the samples were kept at."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_trainer.sample_buffer import Sample, SampleBuffer, labelled_samples
from edge_runtime.frames import Frame


def _sample(t: float, height: int = 40, width: int = 60) -> Sample:
    # every pixel's value encodes its own position, so a crop shows where it was taken
    rows, cols = np.mgrid[0:height, 0:width]
    rgb = np.stack([rows, cols, np.full_like(rows, int(t))], axis=-1).astype(np.uint8)
    return Sample(t, rgb, ((rows + cols) % 7).astype(np.uint8))


def test_the_horizon_keeps_the_last_seconds_even_out_of_order():
    buffer = SampleBuffer(horizon_s=10.0)
    for t in (0.0, 5.0, 12.0, 3.0, 11.0):
        buffer.add(_sample(t))
    assert [s.timestamp for s in buffer.samples()] == [3.0, 5.0, 11.0, 12.0]
    buffer.add(_sample(20.0))
    assert [s.timestamp for s in buffer.samples()] == [11.0, 12.0, 20.0]


def test_crops_are_aligned_random_windows_at_the_kept_scale():
    buffer = SampleBuffer(horizon_s=100.0)
    for t in range(5):
        buffer.add(_sample(float(t)))
    rgb, labels, _ = buffer.batch(64, np.random.default_rng(0), crop=(16, 24))
    assert rgb.shape == (64, 16, 24, 3) and labels.shape == (64, 16, 24)
    tops, lefts = rgb[:, 0, 0, 0], rgb[:, 0, 0, 1]
    # unscaled: one pixel per pixel, and the labels are those of the same window
    assert np.all(np.diff(rgb[:, :, 0, 0].astype(int), axis=1) == 1)
    assert np.all(np.diff(rgb[:, 0, :, 1].astype(int), axis=1) == 1)
    rows = tops[:, None, None] + np.arange(16)[None, :, None]
    cols = lefts[:, None, None] + np.arange(24)[None, None, :]
    assert np.array_equal(labels, ((rows + cols) % 7).astype(np.uint8))
    # windows anywhere in the frame, never past its edge
    assert tops.min() == 0 and tops.max() == 40 - 16
    assert lefts.min() == 0 and lefts.max() == 60 - 24
    assert set(rgb[:, 0, 0, 2]) == set(range(5))  # every sample drawn


def test_a_crop_larger_than_the_frame_takes_the_whole_frame():
    buffer = SampleBuffer(horizon_s=100.0)
    buffer.add(_sample(1.0))
    rgb, labels, _ = buffer.batch(2, np.random.default_rng(0), crop=(321, 321))
    assert rgb.shape == (2, 40, 60, 3) and labels.shape == (2, 40, 60)
    whole, _, _ = buffer.batch(1, np.random.default_rng(0))
    assert np.array_equal(whole[0], _sample(1.0).rgb)


def test_an_empty_buffer_has_no_batch():
    with pytest.raises(ValueError, match="nothing to draw from"):
        SampleBuffer(horizon_s=1.0).batch(1, np.random.default_rng(0))


def test_held_out_samples_are_never_drawn_and_are_the_newest():
    buffer = SampleBuffer(horizon_s=100.0)
    for t in (4.0, 0.0, 3.0, 1.0, 2.0):  # out of order: "newest" is by timestamp
        buffer.add(_sample(t))
    assert [s.timestamp for s in buffer.newest(2)] == [3.0, 4.0]
    assert buffer.newest(0) == []
    assert [s.timestamp for s in buffer.newest(9)] == [0.0, 1.0, 2.0, 3.0, 4.0]  # all there is
    rgb, _, _ = buffer.batch(200, np.random.default_rng(0), held_out=2)
    assert set(rgb[:, 0, 0, 2]) == {0, 1, 2}
    with pytest.raises(ValueError, match="nothing to draw from"):
        buffer.batch(1, np.random.default_rng(0), held_out=5)


def test_labelled_samples_scale_frames_and_labels_together():
    frames = [Frame.from_rgb(i, float(i), np.full((30, 40, 3), i, np.uint8)) for i in range(2)]
    labels = np.zeros((2, 60, 80), np.uint8)
    labels[:, :, 40:] = 15  # right half
    samples = labelled_samples(frames, labels, (15, 20))
    assert [s.timestamp for s in samples] == [0.0, 1.0]
    assert samples[1].rgb.shape == (15, 20, 3) and np.all(samples[1].rgb == 1)
    assert samples[0].labels.dtype == np.uint8
    assert np.all(samples[0].labels[:, :10] == 0) and np.all(samples[0].labels[:, 10:] == 15)
