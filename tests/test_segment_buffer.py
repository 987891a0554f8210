"""H.264 segments of real frames, and the buffer that cuts them per T_update off the hot path."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from av.video.frame import PictureType

from edge_runtime.frames import Frame
from edge_runtime.h264 import (
    SegmentDecodeError,
    bitrate_for_size,
    decode_frames,
    decode_rgb,
    decode_segment,
    encode_segment,
    region_boxes,
    upload_size,
)
from edge_runtime.profile import BufferSection
from edge_runtime.segment_buffer import BufferSettings, EncodedSegment, SegmentBuffer
from edge_runtime.sources import open_source
from shared_schema.messages import Control, EncoderKnobs, RegionQuality, Segment

WAIT_S = 10.0  # generous bound on a worker's delivery; normally milliseconds


def _samples(path: Path, count: int, step: int = 10) -> list[Frame]:
    """Every ``step``-th frame, restamped as samples taken once a second."""
    with open_source(str(path)) as source:
        picked = itertools.islice(source, 0, count * step, step)
        return [Frame(i, float(i), frame.video) for i, frame in enumerate(picked)]


@pytest.fixture(scope="module")
def vtest(shared_dir: Path) -> list[Frame]:
    return _samples(shared_dir / "videos" / "vtest.avi", 10)  # 768x576


@pytest.fixture(scope="module")
def small(vtest: list[Frame]) -> list[Frame]:
    """vtest samples at 192x144: cheap to encode, for the buffer's logic."""
    return [Frame(f.index, f.timestamp, f.video.reformat(192, 144)) for f in vtest]


def _stamped(frames: list[Frame], stamps: list[float]) -> list[Frame]:
    return [Frame(i, t, frames[i % len(frames)].video) for i, t in enumerate(stamps)]


# --- the codec ------------------------------------------------------------------------------


def test_upload_size():
    assert upload_size(768, 576) == (768, 576)
    assert upload_size(768, 576, width=384) == (384, 288)
    assert upload_size(768, 432, height=216) == (384, 216)
    assert upload_size(768, 432, width=300, height=200) == (300, 200)
    assert upload_size(641, 361) == (640, 360)  # 4:2:0 needs even sizes
    assert upload_size(768, 432, width=101) == (100, 56)


def test_segment_round_trip_at_source_size(vtest: list[Frame]):
    data = encode_segment(vtest, EncoderKnobs(bitrate_kbps=200.0), fps=1.0)
    assert data.startswith(b"\x00\x00\x00\x01")  # Annex-B
    pictures = decode_segment(data, expected_frames=10)
    assert {(p.width, p.height) for p in pictures} == {(768, 576)}
    assert pictures[0].key_frame
    assert {p.pict_type for p in pictures} == {PictureType.I, PictureType.P}
    original = np.stack([f.rgb(768, 576) for f in vtest]).astype(np.float32)
    decoded = decode_rgb(data, [f.timestamp for f in vtest], 768, 576).astype(np.float32)
    psnr = 10 * np.log10(255**2 / np.mean((decoded - original) ** 2))
    assert psnr > 30  # measured 38 dB


def test_encoding_leaves_the_callers_frames_alone(vtest: list[Frame]):
    before = [(f.video.pts, f.video.time_base, f.video.pict_type) for f in vtest]
    encode_segment(vtest[:3], EncoderKnobs(qp=30), fps=1.0)
    assert [(f.video.pts, f.video.time_base, f.video.pict_type) for f in vtest] == before


def test_upload_size_and_qp_knobs(vtest: list[Frame]):
    fine = encode_segment(vtest, EncoderKnobs(width=384, qp=20), fps=1.0)
    coarse = encode_segment(vtest, EncoderKnobs(width=384, qp=40), fps=1.0)
    for data in (fine, coarse):
        assert {(p.width, p.height) for p in decode_segment(data, 10)} == {(384, 288)}
    assert len(coarse) < len(fine) / 4  # measured 14 KB against 270 KB


def _error_by_half(frames: list[Frame], data: bytes) -> tuple[float, float]:
    """The mean absolute luma error of the decoded segment, left half and right half."""
    decoded = decode_segment(data, len(frames))
    errors = [np.abs(p.to_ndarray(format="gray").astype(int) - f.video.to_ndarray(format="gray"))
              for p, f in zip(decoded, frames, strict=True)]  # fmt: skip
    mean = np.mean(errors, axis=0)
    half = mean.shape[1] // 2
    return float(mean[:, :half].mean()), float(mean[:, half:].mean())


def test_region_quality_spends_the_bits_where_the_knob_asks(vtest: list[Frame]):
    frames = vtest[:4]
    plain = _error_by_half(frames, encode_segment(frames, EncoderKnobs(), fps=1.0))
    left = EncoderKnobs(roi=RegionQuality(cols=2, rows=1, qoffsets=(-0.5, 0.5)))
    right = EncoderKnobs(roi=RegionQuality(cols=4, rows=2, qoffsets=(0.5, 0.5, -0.5, -0.5) * 2))
    fine_left, coarse_right = _error_by_half(frames, encode_segment(frames, left, fps=1.0))
    coarse_left, fine_right = _error_by_half(frames, encode_segment(frames, right, fps=1.0))
    assert fine_left < plain[0] < coarse_left and fine_right < plain[1] < coarse_right
    assert coarse_right > 2 * fine_left and coarse_left > 2 * fine_right
    # all offsets zero is no region at all: the same bytes as without the knob
    flat = EncoderKnobs(roi=RegionQuality(cols=3, rows=3, qoffsets=(0.0,) * 9))
    assert encode_segment(frames, flat, fps=1.0) == encode_segment(frames, EncoderKnobs(), fps=1.0)


def test_region_boxes_tile_the_picture():
    roi = RegionQuality(cols=3, rows=2, qoffsets=(0.0,) * 6)
    boxes = region_boxes(100, 51, roi)
    assert len(boxes) == 6 and boxes[0] == (0, 0, 33, 25) and boxes[-1] == (66, 25, 34, 26)
    assert sum(w * h for _, _, w, h in boxes) == 100 * 51
    with pytest.raises(ValueError):
        RegionQuality(cols=2, rows=2, qoffsets=(0.0,) * 3)


def test_frames_of_any_size_and_pixel_format():
    rng = np.random.default_rng(0)
    frames = [
        Frame.from_rgb(i, float(i), rng.integers(0, 255, (77, 101, 3), dtype=np.uint8))
        for i in range(3)
    ]
    data = encode_segment(frames, EncoderKnobs(qp=10), fps=0.5)
    assert [(p.width, p.height) for p in decode_segment(data, 3)] == [(100, 76)] * 3


@pytest.mark.parametrize("video", ["vtest.avi", "one-by-one-person-detection.mp4"])
def test_bitrate_is_roughly_respected(shared_dir: Path, video: str):
    # 10 samples at 1 fps and 200 kbps: 10 s of budget, 250 KB. Measured: vtest.avi 247 KB,
    # one-by-one-person-detection.mp4 274 KB (768x576 and 768x432, preset veryfast).
    frames = _samples(shared_dir / "videos" / video, 10)
    data = encode_segment(frames, EncoderKnobs(bitrate_kbps=200.0), fps=1.0)
    assert 0.6 * 250_000 < len(data) < 1.4 * 250_000


def test_decode_frames_carries_the_timestamps(small: list[Frame]):
    data = encode_segment(small, EncoderKnobs(), fps=1.0)
    stamps = [10.0 + f.timestamp for f in small]
    frames = decode_frames(data, stamps, first_index=5)
    assert [(f.index, f.timestamp) for f in frames] == [(5 + i, t) for i, t in enumerate(stamps)]
    assert frames[0].rgb(96, 72).shape == (72, 96, 3)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda data: b"", "empty"),
        (lambda data: random.Random(3).randbytes(5000), "H.264"),
        (lambda data: b"\x00" * 1000, "H.264"),
        (lambda data: data[: len(data) // 2], "expected|damaged"),
        (lambda data: data[:-50], "damaged"),
        (lambda data: data[500:], "H.264|damaged|expected"),
    ],
    ids=["empty", "garbage", "zeros", "half", "last-frame-cut", "head-cut"],
)
def test_bad_segments_raise_the_decode_error(
    small: list[Frame], mangle: Callable[[bytes], bytes], message: str
):
    data = encode_segment(small, EncoderKnobs(), fps=1.0)
    with pytest.raises(SegmentDecodeError, match=message):
        decode_segment(mangle(data), expected_frames=len(small))


def test_wrong_frame_count_is_a_decode_error(small: list[Frame]):
    data = encode_segment(small[:4], EncoderKnobs(), fps=1.0)
    with pytest.raises(ValueError, match="4 frames decoded where 5 were expected"):
        decode_segment(data, expected_frames=5)
    with pytest.raises(SegmentDecodeError):
        decode_frames(data, [0.0, 1.0, 2.0])


def test_a_segment_is_held_to_the_size_and_count_its_message_says(small: list[Frame]):
    data = encode_segment(small, EncoderKnobs(), fps=1.0)  # 192x144 frames
    count = len(small)
    assert len(decode_segment(data, expected_frames=count, size=(192, 144))) == count
    with pytest.raises(SegmentDecodeError, match="frame 0 is 192x144, the segment says 64x64"):
        decode_frames(data, [0.0] * count, size=(64, 64))
    # decoding stops at the first picture past the count: a small header cannot admit more
    with pytest.raises(SegmentDecodeError, match="more than the 2 frames the segment says"):
        decode_segment(data, expected_frames=2, size=(192, 144))


def test_bitrate_for_size_fits_a_byte_limit(vtest: list[Frame]):
    kbps = bitrate_for_size(100_000, frames=10, fps=1.0)
    data = encode_segment(vtest, EncoderKnobs(bitrate_kbps=kbps), fps=1.0)
    assert len(data) <= 100_000


# --- the buffer -----------------------------------------------------------------------------


class Collector:
    """An ``on_segment`` callback that keeps what it gets and can hold the worker up."""

    def __init__(self) -> None:
        self.segments: list[EncodedSegment] = []
        self.arrived = threading.Condition()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, segment: EncodedSegment) -> None:
        self.entered.set()
        self.gate.wait()
        with self.arrived:
            self.segments.append(segment)
            self.arrived.notify_all()

    def wait_for(self, count: int) -> list[EncodedSegment]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.segments) >= count, WAIT_S)
            return list(self.segments)


def test_segments_are_cut_at_t_update_by_timestamp(small: list[Frame]):
    got = Collector()
    buffer = SegmentBuffer(
        got, BufferSettings(t_update_s=2.0, sampling_rate_fps=2.0), max_pending=8
    )
    for frame in _stamped(small, [0.5 * i for i in range(12)]):  # 0.0 … 5.5 s
        buffer.add(frame)
    buffer.close()
    assert [s.timestamps for s in got.segments] == [
        (0.0, 0.5, 1.0, 1.5),
        (2.0, 2.5, 3.0, 3.5),
        (4.0, 4.5, 5.0, 5.5),
    ]
    for segment in got.segments:
        assert (segment.width, segment.height, segment.sampling_rate_fps) == (192, 144, 2.0)
        assert len(decode_segment(segment.data, 4)) == 4
    counters = buffer.counters.snapshot()
    assert counters["segments_encoded"] == 3 and counters["frames_encoded"] == 12
    assert counters["bytes_encoded"] == sum(len(s.data) for s in got.segments)
    assert buffer.encode_seconds > 0 and counters["encode_cpu_us"] > 0


def test_a_segment_spans_t_update_from_its_first_frame(small: list[Frame]):
    got = Collector()
    buffer = SegmentBuffer(got, BufferSettings(t_update_s=10.0), max_pending=8)
    for frame in _stamped(small, [3.0, 9.0, 12.9, 13.0, 40.0]):
        buffer.add(frame)
    buffer.close()
    assert [s.timestamps for s in got.segments] == [(3.0, 9.0, 12.9), (13.0,), (40.0,)]


def test_timestamps_going_back_start_a_new_segment(small: list[Frame]):
    got = Collector()
    buffer = SegmentBuffer(got, BufferSettings(t_update_s=10.0), max_pending=8)
    for frame in _stamped(small, [5.0, 6.0, 0.0, 1.0]):  # e.g. the source was reopened
        buffer.add(frame)
    buffer.close()
    assert [s.timestamps for s in got.segments] == [(5.0, 6.0), (0.0, 1.0)]
    assert all(isinstance(s.message(), Segment) for s in got.segments)


def test_reconfigure_applies_from_the_next_segment_but_t_update_at_once(small: list[Frame]):
    """A control mid-segment: the open segment keeps its rate and knobs (what it is encoded
    with) but closes by the new T_update, shorter here (RECL's look after a cut)."""
    got = Collector()
    buffer = SegmentBuffer(
        got, BufferSettings(t_update_s=10.0, sampling_rate_fps=1.0), max_pending=8
    )
    frames = _stamped(small, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    buffer.add(frames[0])
    control = Control(sampling_rate_fps=0.5, t_update_s=2.0, encoder=EncoderKnobs(width=96, qp=30))
    buffer.reconfigure(
        t_update_s=control.t_update_s,
        sampling_rate_fps=control.sampling_rate_fps,
        knobs=control.encoder,
    )
    for frame in frames[1:5]:
        buffer.add(frame)
    buffer.reconfigure(t_update_s=4.0)  # longer: the open segment (from 4.0) takes 7.0 too
    for frame in frames[5:]:
        buffer.add(frame)
    buffer.close()
    first, second, third = got.segments
    assert first.timestamps == (0.0, 1.0) and (first.width, first.sampling_rate_fps) == (192, 1.0)
    assert first.knobs == EncoderKnobs()
    assert second.timestamps == (2.0, 3.0)
    assert (second.width, second.height, second.sampling_rate_fps) == (96, 72, 0.5)
    assert second.knobs.qp == 30
    assert third.timestamps == (4.0, 5.0, 6.0, 7.0)
    message = second.message(model_version=3)
    assert (message.width, message.timestamps, message.model_version) == (96, second.timestamps, 3)


def test_max_frames_closes_a_segment_early(small: list[Frame]):
    got = Collector()
    buffer = SegmentBuffer(got, BufferSettings(t_update_s=100.0), max_frames=3, max_pending=8)
    for frame in small[:7]:
        buffer.add(frame)
    buffer.close()
    assert [len(s.timestamps) for s in got.segments] == [3, 3, 1]
    assert buffer.counters.get("segments_full") == 2


def test_add_never_waits_for_a_stuck_encoder_and_drops_the_oldest(small: list[Frame]):
    got = Collector()
    got.gate.clear()  # the first delivery blocks the worker until the gate opens
    buffer = SegmentBuffer(got, BufferSettings(t_update_s=1.0), max_pending=2)
    frames = _stamped(small, [float(i) for i in range(40)])  # 40 one-frame segments
    buffer.add(frames[0])
    buffer.add(frames[1])  # closes the first segment, which the worker takes and sticks on
    assert got.entered.wait(WAIT_S)
    latencies = []
    for frame in frames[2:]:
        started = time.perf_counter()
        buffer.add(frame)
        latencies.append(time.perf_counter() - started)
    assert max(latencies) < 0.05  # measured: ~10 µs each
    assert buffer.pending <= 2
    got.gate.set()
    buffer.close()
    counters = buffer.counters.snapshot()
    assert counters["segments_dropped"] == counters["dropped.backlog"] == 37
    assert counters["frames_encoded"] + counters["frames_dropped"] == 40
    # The stuck one, then the newest two: 39 joined the queue at close().
    assert [s.timestamps for s in got.segments] == [(0.0,), (38.0,), (39.0,)]


def test_flush_delivers_the_open_segment_now(small: list[Frame]):
    got = Collector()
    buffer = SegmentBuffer(got, BufferSettings(t_update_s=100.0))
    for frame in small[:3]:
        buffer.add(frame)
    buffer.flush()
    [segment] = got.wait_for(1)
    assert segment.timestamps == (0.0, 1.0, 2.0)
    buffer.flush()  # nothing open: nothing happens
    buffer.close()
    assert len(got.segments) == 1


def test_close_delivers_the_last_segment_and_refuses_later_frames(small: list[Frame]):
    got = Collector()
    buffer = SegmentBuffer(got, BufferSettings(t_update_s=100.0))
    buffer.add(small[0])
    buffer.close()
    assert [s.timestamps for s in got.segments] == [(0.0,)]
    buffer.add(small[1])
    assert buffer.counters.get("dropped.closed") == 1


def test_oversize_segment_is_encoded_again_smaller(vtest: list[Frame]):
    got = Collector()
    limit = 64 * 1024  # the profile's floor; 10 frames at 200 kbps make ~250 KB
    buffer = SegmentBuffer(got, BufferSettings(t_update_s=100.0), max_segment_bytes=limit)
    for frame in vtest:
        buffer.add(frame)
    buffer.close()
    [segment] = got.segments
    assert len(segment.data) <= limit
    assert segment.knobs.bitrate_kbps < 200.0
    assert len(decode_segment(segment.data, 10)) == 10
    assert buffer.counters.get("segments_reencoded") == 1


def test_segment_that_cannot_fit_is_dropped(vtest: list[Frame]):
    got = Collector()
    buffer = SegmentBuffer(got, BufferSettings(t_update_s=100.0), max_segment_bytes=500)
    for frame in vtest[:3]:
        buffer.add(frame)
    buffer.close()
    assert got.segments == []
    counters = buffer.counters.snapshot()
    assert counters["dropped.oversize"] == 1 and counters["frames_dropped"] == 3


def test_encoder_and_callback_failures_are_counted_not_fatal(small: list[Frame]):
    broken = SegmentBuffer(Collector(), BufferSettings(t_update_s=1.0), preset="no-such-preset")
    for frame in small[:2]:
        broken.add(frame)
    broken.close(timeout=WAIT_S)
    assert broken.counters.get("dropped.encode_error") == 2

    calls = []

    def flaky(segment: EncodedSegment) -> None:
        calls.append(segment)
        if len(calls) == 1:
            raise RuntimeError("consumer bug")

    buffer = SegmentBuffer(flaky, BufferSettings(t_update_s=1.0))
    for frame in small[:2]:
        buffer.add(frame)
    buffer.close(timeout=WAIT_S)
    assert len(calls) == 2 and buffer.counters.get("callback_errors") == 1


def test_from_config_takes_the_profiles_buffer_section(tmp_path: Path):
    section = BufferSection(
        t_update_s=5.0,
        bitrate_kbps=150.0,
        upload_width=320,
        max_frames=50,
        max_segment_bytes=2**20,
        spool_dir=tmp_path,
    )
    buffer = SegmentBuffer.from_config(section, Collector(), sampling_rate_fps=0.5)
    assert buffer.settings == BufferSettings(5.0, 0.5, EncoderKnobs(bitrate_kbps=150.0, width=320))
    buffer.close()


def test_a_scene_cut_goes_up_alone_at_once(small: list[Frame]):
    """The segment being filled closes unflagged; the cut frame is a segment of its own, sent
    without waiting for T_update, and its message says so; later frames start a new one."""
    got = Collector()
    buffer = SegmentBuffer(got, BufferSettings(t_update_s=10.0), max_pending=8)
    frames = _stamped(small, [0.0, 1.0, 2.0, 3.0, 4.0])
    for frame in frames[:3]:
        buffer.add(frame)
    buffer.add(frames[3], scene_cut=True)
    old, cut = got.wait_for(2)  # delivered before the buffer closes
    buffer.add(frames[4])
    buffer.close()
    assert old.timestamps == (0.0, 1.0, 2.0) and not old.scene_cut
    assert cut.timestamps == (3.0,) and cut.scene_cut and cut.message().scene_cut
    assert got.segments[2].timestamps == (4.0,) and not got.segments[2].message().scene_cut
