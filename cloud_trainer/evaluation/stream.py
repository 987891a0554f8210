"""Several videos replayed back to back as one stream, on one virtual clock.

A video's frames keep their own spacing (10, 12.5 or 30 fps, any size); the next video starts
one frame interval after the previous one's last frame, so virtual time runs on across the
joins, which is where the scene changes are. Frames are decoded by the runtime's own sources
(``strict``: a truncated file is an error, not a shorter evaluation).

A stream is a list of parts, each a video from ``start_s`` for ``duration_s``: whole videos (or
their first ``clip_s``), or, for a stream of recurring scenes, ``rotation``'s segments.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import av
import numpy as np

from edge_runtime.frames import Frame
from edge_runtime.sources import open_source


@dataclass
class StreamFrame:
    index: int  # position in the whole stream
    video: int  # which of the stream's videos
    t: float  # virtual time, seconds from the stream's first frame
    frame: Frame  # the source's frame (its own index and timestamp)
    evaluated: bool  # scored (every eval_stride-th frame of the stream)
    size: tuple[int, int]  # (height, width) of the device model's input
    interval_s: float = 1 / 30  # its video's frame interval

    @cached_property
    def rgb(self) -> np.ndarray:
        """The frame as the device's model sees it (scaled to the model's input)."""
        height, width = self.size
        return self.frame.rgb(width, height)

    def on_clock(self) -> Frame:
        """The picture stamped with virtual time, as the device's segment buffer gets it."""
        return Frame(self.index, self.t, self.frame.video)


@dataclass(frozen=True)
class VideoPart:
    path: Path
    duration_s: float  # as the container declares it, cut to the clip
    start_s: float = 0.0  # where in the video the part starts

    @property
    def whole(self) -> bool:
        return self.start_s == 0.0 and self.duration_s >= _declared_duration(self.path)

    @property
    def name(self) -> str:
        if self.start_s == 0.0:
            return self.path.name
        return f"{self.path.name}@{round(self.start_s, 1):g}s"


def rotation(
    videos: Sequence[Path], segment_s: float, rounds: int, first: int = 0
) -> list[VideoPart]:
    """Recurring scenes: in each round, the next ``segment_s`` of every video in turn (from
    video ``first``); a video shorter than the rounds need starts over."""
    durations = [_declared_duration(Path(v)) for v in videos]
    parts = []
    for r in range(rounds):
        for i in range(len(videos)):
            number = (first + i) % len(videos)
            length = durations[number]
            # its segments: every segment_s, the last one at least half as long
            segments = max(1, math.ceil((length - segment_s / 2) / segment_s))
            start = (r % segments) * segment_s
            parts.append(VideoPart(Path(videos[number]), min(segment_s, length - start), start))
    return parts


@dataclass
class ReplayStream:
    videos: Sequence[Path]
    size: tuple[int, int]  # (height, width) frames are scaled to: the device model's input
    clip_s: float | None = None
    eval_stride: int = 1
    parts: list[VideoPart] = field(default_factory=list)  # given: ``videos`` and clip unused
    end_s: float = field(init=False, default=0.0)  # one frame past the last, once replayed

    def __post_init__(self) -> None:
        if self.parts:
            self.videos, self.clip_s = [p.path for p in self.parts], None  # the parts say
            return
        self.videos = [Path(v) for v in self.videos]
        for path in self.videos:
            duration = _declared_duration(path)
            if self.clip_s is not None:
                duration = min(duration, self.clip_s)
            self.parts.append(VideoPart(path, duration))

    @property
    def duration_s(self) -> float:
        """Declared length, for progress bars; the replay's own times are the frames'."""
        return sum(p.duration_s for p in self.parts)

    @property
    def names(self) -> list[str]:
        """Each video's file name; a video replayed again is told apart: ``a.mp4 (2)``."""
        names, seen = [], Counter[str]()
        for part in self.parts:
            seen[part.name] += 1
            count = seen[part.name]
            names.append(part.name if count == 1 else f"{part.name} ({count})")
        return names

    def signature(self) -> dict[str, object]:
        """What makes two runs score the same frames (runs merge only when it matches)."""
        return {"videos": self.names, "clip_s": self.clip_s, "eval_stride": self.eval_stride}

    def __iter__(self) -> Iterator[StreamFrame]:
        index, offset = 0, 0.0
        for number in range(len(self.videos)):
            last = None
            for frame in self._video(number, index, offset):
                last = frame
                yield frame
            if last is None:
                raise ValueError(f"{self.videos[number]}: no frame to replay")
            start = self.parts[number].start_s
            index, offset = last.index + 1, offset + last.frame.timestamp - start + last.interval_s
        self.end_s = offset

    def replay_video(self, first: StreamFrame) -> Iterator[StreamFrame]:
        """Every frame of ``first``'s video again, from ``first`` on, as the stream gave them
        (the offline oracle sees a whole video before scoring it)."""
        start = self.parts[first.video].start_s
        yield from self._video(first.video, first.index, first.t - first.frame.timestamp + start)

    def _video(self, number: int, index: int, offset: float) -> Iterator[StreamFrame]:
        """Part ``number`` whose first frame is the stream's ``index``-th, at ``offset``."""
        part = self.parts[number]
        end = part.start_s + part.duration_s
        with open_source(str(part.path), strict=part.whole) as source:
            interval = 1.0 / (source.fps or 30.0)
            for frame in source:
                if frame.timestamp < part.start_s:
                    continue
                if not part.whole and frame.timestamp >= end:
                    break
                scored = index % self.eval_stride == 0
                t = offset + frame.timestamp - part.start_s
                yield StreamFrame(index, number, t, frame, scored, self.size, interval)
                index += 1


def _declared_duration(path: Path) -> float:
    with av.open(str(path)) as container:
        if container.duration:
            return container.duration / av.time_base
        stream = container.streams.video[0]
        return float(stream.frames / (stream.average_rate or 30))
