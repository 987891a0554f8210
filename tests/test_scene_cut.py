"""The device's scene-cut detector: its histogram against OpenCV's HSV, its distance, and the cut
between two real videos found at the first frame of the second and nowhere else."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cloud_trainer.evaluation.stream import ReplayStream
from edge_runtime.frames import Frame
from edge_runtime.scene_cut import (
    HUE_BINS,
    SATURATION_BINS,
    SceneCutDetector,
    SceneCutSection,
    distance,
    hue_saturation,
    hue_saturation_histogram,
)
from shared_schema.envelope import decode, encode
from shared_schema.messages import Segment


def test_hue_and_saturation_are_opencvs():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    rgb[:8] = rng.integers(0, 256, size=(8, 64, 1), dtype=np.uint8)  # grey pixels: hue 0
    hsv = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H in [0, 360)
    hue, saturation = hue_saturation(rgb)
    turns = hsv[..., 0].ravel() / 360.0
    assert np.allclose(hue, turns, atol=1e-5) and np.allclose(saturation, hsv[..., 1].ravel())


def test_the_histogram_bins_each_pixel_at_its_5_bit_colours_centre():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    centres = (rgb >> 3) * 8 + 4
    hue, saturation = hue_saturation(centres)
    h = np.minimum((hue * HUE_BINS).astype(int), HUE_BINS - 1)
    s = np.minimum((saturation * SATURATION_BINS).astype(int), SATURATION_BINS - 1)
    expected = np.bincount(h * SATURATION_BINS + s, minlength=HUE_BINS * SATURATION_BINS)
    histogram = hue_saturation_histogram(rgb)
    assert np.array_equal(histogram * (48 * 64), expected) and histogram.sum() == 1.0


def test_distance_is_zero_for_the_same_colours_and_one_for_disjoint_ones():
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((8, 8, 3), np.uint8)
    blue[..., 2] = 255
    shuffled = np.ascontiguousarray(np.concatenate([red, blue])[::-1])
    assert distance(hue_saturation_histogram(red), hue_saturation_histogram(red)) == 0.0
    assert distance(hue_saturation_histogram(red), hue_saturation_histogram(blue)) == 1.0
    halves = hue_saturation_histogram(np.concatenate([red, blue]))
    assert distance(halves, hue_saturation_histogram(shuffled)) == 0.0  # where does not count
    assert distance(halves, hue_saturation_histogram(red)) == pytest.approx(0.5)


def _frame(t: float, colour: int) -> Frame:
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., colour] = 255
    return Frame.from_rgb(0, t, rgb)


def test_one_cut_per_hold_and_none_on_the_first_frame():
    assert SceneCutDetector.of(SceneCutSection()) is None  # off: no detector at all
    detector = SceneCutDetector.of(SceneCutSection(enabled=True, hold_s=2.0))
    assert detector is not None
    frames = [_frame(0.0, 0), _frame(0.1, 2), _frame(0.2, 0), _frame(1.0, 0), _frame(3.0, 2)]
    assert [detector.cut(f) for f in frames] == [False, True, False, False, True]


def test_the_cut_between_two_real_videos_and_no_other(shared_dir):
    """car-detection.mp4's fast pan at its end (its strongest change within a video), then
    bottle-detection.mp4: a cut on the bottles' first frame only."""
    videos = [shared_dir / "videos" / n for n in ("car-detection.mp4", "bottle-detection.mp4")]
    stream = ReplayStream(videos, (513, 513), clip_s=None)
    detector = SceneCutDetector(SceneCutSection(enabled=True))
    cuts, first_bottle = [], None
    for frame in stream:
        if frame.video == 1 and first_bottle is None:
            first_bottle = frame.t
        if detector.cut(frame.on_clock()):
            cuts.append(frame.t)
        if first_bottle is not None and frame.t > first_bottle + 3.0:
            break
    assert cuts == [first_bottle]


def test_only_a_cut_segment_carries_the_flag_on_the_wire():
    """A segment of no cut encodes as it did before cuts existed, for older trainers."""
    fields = {"width": 64, "height": 48, "timestamps": (1.0,), "sampling_rate_fps": 1.0,
              "bitrate_kbps": 200.0}  # fmt: skip
    plain = decode(encode(Segment(**fields), device_id="d", seq=1, boot="b" * 16, body=b"x"))
    assert b"scene_cut" not in Segment(**fields).model_dump_json().encode()
    assert not plain.msg.scene_cut
    cut = decode(encode(Segment(**fields, scene_cut=True), device_id="d", seq=2, boot="b" * 16,
                        body=b"x"))  # fmt: skip
    assert cut.msg.scene_cut
