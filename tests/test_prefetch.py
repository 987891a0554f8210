"""The prefetcher: frames reach the frame loop in the source's order, each with its own input,
scaled beside the loop at idle priority; a starved scaler never holds the loop up; source
errors and an early exit end it cleanly."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from edge_runtime.frames import Frame
from edge_runtime.prefetch import Prefetcher
from edge_runtime.priority import BACKGROUND_NICE
from edge_runtime.sources import SourceError
from edge_runtime.telemetry import FrameStats

SIZE = (6, 8)  # the model's input, (height, width)
SCALER = "prefetch-scale"


def _frames(count: int) -> list[Frame]:
    return [
        Frame.from_rgb(i, i / 10, np.full((12, 16, 3), i * 7 % 256, np.uint8)) for i in range(count)
    ]


class _Watched:
    """A frame that records which threads scaled it (and the scaler's policy), says when the
    scaler begins on it, and can hold the scaler back as a starved one would be."""

    def __init__(self, frame: Frame, release: threading.Event | None = None) -> None:
        self.frame = frame
        self.index = frame.index
        self.scaled_on: list[str] = []
        self.policy: int | None = None
        self.scaling = threading.Event()
        self._release = release

    def rgb(self, width: int, height: int) -> np.ndarray:
        self.scaled_on.append(threading.current_thread().name)
        if self.scaled_on[-1] == SCALER:
            if hasattr(os, "SCHED_IDLE"):
                self.policy = os.sched_getscheduler(0)
            self.scaling.set()
            if self._release is not None:  # starved: its input comes too late
                self._release.wait()
                return np.zeros((height, width, 3), np.uint8)
        return self.frame.rgb(width, height)


def test_each_frame_comes_with_its_own_input_in_the_sources_order():
    frames = _frames(30)
    stats = FrameStats()
    with Prefetcher(frames, lambda: SIZE, stats) as prepared:
        got = list(prepared)
    assert [frame.index for frame, _ in got] == list(range(30))
    for frame, rgb in got:
        np.testing.assert_array_equal(rgb, frame.rgb(SIZE[1], SIZE[0]))
    stages = stats.stages()  # the scaler, at idle priority, may not have had a core yet
    assert stages["wait"] > 0 and stages.get("scale", 0.0) + stages.get("late_scale", 0.0) > 0


def test_a_frame_the_scaler_finished_is_not_scaled_again_and_the_scaler_idles():
    frames = [_Watched(frame) for frame in _frames(3)]
    source_nice: list[int] = []

    def source() -> Iterator[_Watched]:
        for frame in frames:
            source_nice.append(os.getpriority(os.PRIO_PROCESS, 0))  # 0: the calling thread
            yield frame

    with Prefetcher(source(), lambda: SIZE, FrameStats()) as prepared:
        assert frames[2].scaling.wait(60)  # so the first two are scaled and offered
        got = list(prepared)
    assert [frame.index for frame, _ in got] == [0, 1, 2]
    assert frames[0].scaled_on == frames[1].scaled_on == [SCALER]
    assert all(nice >= BACKGROUND_NICE for nice in source_nice)  # the reader gives way
    if hasattr(os, "SCHED_IDLE"):
        assert frames[0].policy == os.SCHED_IDLE  # the scaler takes only a free core


def test_a_starved_scaler_never_holds_the_frame_loop_up():
    release = threading.Event()
    frames = [_Watched(frame, release) for frame in _frames(5)]
    stats = FrameStats()
    with Prefetcher(frames, lambda: SIZE, stats) as prepared:
        got = list(prepared)  # the scaler is stuck on its first frame all along
        release.set()
    assert [frame.index for frame, _ in got] == [0, 1, 2, 3, 4]
    for frame, rgb in got:  # the frame loop's own inputs; the scaler's late one is dropped
        np.testing.assert_array_equal(rgb, frame.frame.rgb(SIZE[1], SIZE[0]))
    assert all("MainThread" in frame.scaled_on for frame in frames)
    assert stats.stages()["late_scale"] > 0


def test_a_source_error_reaches_the_frame_loop_where_it_happened():
    def source() -> Iterator[Frame]:
        yield from _frames(3)
        raise SourceError("the camera went away")

    seen = []
    with (
        pytest.raises(SourceError, match="went away"),
        Prefetcher(source(), lambda: SIZE, FrameStats()) as prepared,
    ):
        for frame, _ in prepared:
            seen.append(frame.index)
    assert seen == [0, 1, 2]


def test_leaving_early_stops_both_threads_and_the_reading():
    reads = []

    def endless() -> Iterator[Frame]:
        for frame in iter(lambda: _frames(1)[0], None):
            reads.append(frame)
            yield frame

    with Prefetcher(endless(), lambda: SIZE, FrameStats()) as prepared:
        for count, _ in enumerate(prepared, 1):
            if count == 5:
                break
    names = {thread.name for thread in threading.enumerate()}
    assert "prefetch" not in names and SCALER not in names
    assert len(reads) <= 5 + 3  # two waiting for the frame loop, one in the reader's hands
