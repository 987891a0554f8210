"""Sampled frames in, one H.264 segment per T_update out, encoded off the inference thread.

``SegmentBuffer.add`` runs on the inference thread (the hot path): it only appends the frame
under a short lock and never waits for the encoder. Scaling to the upload size is left to the
worker: measured on 768x576 frames going to 384x288 while the worker encodes, add() took 0.04 ms
(median; p99 0.13 ms) keeping the picture, against 0.4 ms (p99 1.3-5.7 ms) scaling it, as the
swscale call hands the GIL to the encoder thread and waits to get it back. The price is memory:
pictures wait at source size, at most ``max_frames × (max_pending + 2)`` of them (the segment
being filled, the waiting ones and the one being encoded).

Segments follow the frames' timestamps: a segment starts at its first frame, and a frame at or
after ``start + T_update`` (or one whose timestamp goes backwards: a new source) closes it and
starts the next. A segment also closes at ``max_frames`` frames. Closed segments wait, at most
``max_pending`` of them, for the worker thread that encodes them and hands each to ``on_segment``;
when the encoder falls behind, the oldest waiting segment is dropped and counted.

A segment that encodes larger than ``max_segment_bytes`` is encoded once more at the bitrate that
fits the limit (``h264.bitrate_for_size``): a blurrier segment still teaches the trainer, a
missing one teaches nothing. If even that does not fit, it is dropped and counted.

Counters: ``segments_encoded``, ``frames_encoded``, ``bytes_encoded``, ``encode_us`` (time spent
encoding) and ``encode_cpu_us`` (the CPU time of it: the worker runs at a low priority, so the
difference is time it waited for a core), ``segments_dropped`` and ``frames_dropped`` (all
causes), ``dropped.<cause>`` per cause (``backlog``, ``oversize``, ``encode_error``, ``closed``),
``segments_reencoded``, ``segments_full`` (closed at ``max_frames``) and ``callback_errors``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edge_runtime.frames import Frame
from edge_runtime.h264 import DEFAULT_PRESET, bitrate_for_size, encode_segment, upload_size
from edge_runtime.priority import lower_thread_priority
from shared_schema.counters import Counters
from shared_schema.messages import EncoderKnobs, Segment

if TYPE_CHECKING:
    from edge_runtime.profile import BufferSection

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BufferSettings:
    """What the trainer controls. A new rate or knobs apply from the next segment on; a new
    T_update to the segment being filled too, which it only tells when to close (RECL's look
    after a scene cut asks for the next segment within seconds, while it is being filled)."""

    t_update_s: float = 10.0
    sampling_rate_fps: float = 1.0  # the rate frames are sampled at: tells x264 the frame rate
    knobs: EncoderKnobs = field(default_factory=EncoderKnobs)


@dataclass(frozen=True, slots=True)
class EncodedSegment:
    """One segment as ``on_segment`` gets it: the H.264 body and what its message says."""

    data: bytes  # H.264 Annex-B, decodable on its own
    timestamps: tuple[float, ...]  # of each frame, in order
    width: int
    height: int
    sampling_rate_fps: float
    knobs: EncoderKnobs  # as encoded: a lowered bitrate after an oversize retry
    encode_s: float
    scene_cut: bool = False  # its one frame starts a new scene (``edge_runtime.scene_cut``)

    @classmethod
    def of(
        cls,
        data: bytes,
        frames: Sequence[Frame],
        knobs: EncoderKnobs,
        sampling_rate_fps: float,
        encode_s: float = 0.0,
        scene_cut: bool = False,
    ) -> EncodedSegment:
        """``frames`` as ``encode_segment`` encoded them into ``data`` with ``knobs``: at the
        size ``upload_size`` gives for the first frame."""
        first = frames[0]
        width, height = upload_size(first.width, first.height, knobs.width, knobs.height)
        timestamps = tuple(frame.timestamp for frame in frames)
        return cls(data, timestamps, width, height, sampling_rate_fps, knobs, encode_s, scene_cut)

    def message(self, model_version: int | None = None) -> Segment:
        """The ``Segment`` message that carries these bytes as its body."""
        return Segment(
            width=self.width,
            height=self.height,
            timestamps=self.timestamps,
            sampling_rate_fps=self.sampling_rate_fps,
            bitrate_kbps=self.knobs.bitrate_kbps,
            model_version=model_version,
            scene_cut=self.scene_cut,
        )


@dataclass(slots=True)
class _Batch:
    """The frames of one segment, with the settings in force when it started."""

    settings: BufferSettings
    frames: list[Frame]
    scene_cut: bool = False

    def takes(self, frame: Frame, t_update_s: float) -> bool:
        first, last = self.frames[0].timestamp, self.frames[-1].timestamp
        return last <= frame.timestamp < first + t_update_s


class SegmentBuffer:
    """Sampled frames in (``add``), encoded segments out (``on_segment``, on a worker thread).

    Call ``close`` at shutdown: it delivers the last segment and stops the worker.
    """

    def __init__(
        self,
        on_segment: Callable[[EncodedSegment], None],
        settings: BufferSettings | None = None,
        *,
        max_frames: int = 600,
        max_segment_bytes: int = 8 * 2**20,
        max_pending: int = 2,
        preset: str = DEFAULT_PRESET,
        threads: int = 1,
    ) -> None:
        if max_frames < 1 or max_pending < 1:
            raise ValueError("max_frames and max_pending must be at least 1")
        self._on_segment = on_segment
        self._settings = settings or BufferSettings()
        self._max_frames = max_frames
        self._max_segment_bytes = max_segment_bytes
        self._max_pending = max_pending
        self._preset = preset
        self._threads = threads
        self.counters = Counters()
        self._cond = threading.Condition()  # guards everything below
        self._open: _Batch | None = None
        self._pending: deque[_Batch] = deque()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="segment-encoder", daemon=True)
        self._worker.start()

    @classmethod
    def from_config(
        cls,
        config: BufferSection,
        on_segment: Callable[[EncodedSegment], None],
        *,
        sampling_rate_fps: float,
    ) -> SegmentBuffer:
        """A buffer with a device profile's ``[buffer]`` limits and initial knobs."""
        return cls(
            on_segment,
            BufferSettings(config.t_update_s, sampling_rate_fps, config.initial_knobs),
            max_frames=config.max_frames,
            max_segment_bytes=config.max_segment_bytes,
        )

    @property
    def settings(self) -> BufferSettings:
        return self._settings

    @property
    def pending(self) -> int:
        """Closed segments waiting for the encoder."""
        with self._cond:
            return len(self._pending)

    @property
    def encode_seconds(self) -> float:
        return self.counters.get("encode_us") / 1e6

    def add(self, frame: Frame, *, scene_cut: bool = False) -> None:
        """Take a sampled frame. Never waits for the encoder. A ``scene_cut`` frame closes the
        segment being filled and goes up at once in a segment of its own."""
        with self._cond:
            if self._closed:
                self.counters.inc("frames_dropped")
                self.counters.inc("dropped.closed")
                return
            if scene_cut:  # (behind a backlog the oldest queued segment gives way, as ever)
                self._close_open()
                self._open = _Batch(self._settings, [frame], scene_cut=True)
                self._close_open()
                return
            if self._open is not None and not self._open.takes(frame, self._settings.t_update_s):
                self._close_open()
            batch = self._open = self._open or _Batch(self._settings, [])
            batch.frames.append(frame)
            if len(batch.frames) >= self._max_frames:
                self.counters.inc("segments_full")
                self._close_open()

    def reconfigure(
        self,
        *,
        t_update_s: float | None = None,
        sampling_rate_fps: float | None = None,
        knobs: EncoderKnobs | None = None,
    ) -> None:
        """Change what is given (``knobs`` replaces all encoder knobs) from the next segment on;
        ``t_update_s`` also for the segment being filled (``BufferSettings``)."""
        with self._cond:
            current = self._settings
            self._settings = BufferSettings(
                t_update_s if t_update_s is not None else current.t_update_s,
                sampling_rate_fps if sampling_rate_fps is not None else current.sampling_rate_fps,
                knobs if knobs is not None else current.knobs,
            )

    def flush(self) -> None:
        """Close the segment being filled now; the worker encodes and delivers it."""
        with self._cond:
            self._close_open()

    def close(self, timeout: float | None = None) -> None:
        """Flush, let the worker encode what waits, and stop it. Later frames are dropped."""
        with self._cond:
            self._close_open()
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)

    def _close_open(self) -> None:
        """With the lock held: the segment being filled, if any, goes to the worker."""
        batch, self._open = self._open, None
        if batch is None:
            return
        self._pending.append(batch)
        if len(self._pending) > self._max_pending:
            self._drop(self._pending.popleft(), "backlog")
        self._cond.notify()

    def _drop(self, batch: _Batch, cause: str) -> None:
        self.counters.inc("segments_dropped")
        self.counters.inc("frames_dropped", len(batch.frames))
        self.counters.inc(f"dropped.{cause}")
        log.warning(
            "dropped a segment of %d frames from %.1f s (%s)",
            len(batch.frames),
            batch.frames[0].timestamp,
            cause,
        )

    def _run(self) -> None:
        lower_thread_priority()  # encoding has a whole T_update of slack; inference has none
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = self._pending.popleft()
            self._deliver(batch)

    def _deliver(self, batch: _Batch) -> None:
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            data, knobs = self._encode(batch)
        except Exception:  # a codec failure loses this segment, never the worker
            log.exception("encoding a segment of %d frames failed", len(batch.frames))
            self._drop(batch, "encode_error")
            return
        finally:
            elapsed = time.perf_counter() - started
            self.counters.inc("encode_us", round(elapsed * 1e6))
            self.counters.inc("encode_cpu_us", round((time.thread_time() - cpu_started) * 1e6))
        if data is None:
            self._drop(batch, "oversize")
            return
        self.counters.inc("segments_encoded")
        self.counters.inc("frames_encoded", len(batch.frames))
        self.counters.inc("bytes_encoded", len(data))
        segment = EncodedSegment.of(
            data, batch.frames, knobs, batch.settings.sampling_rate_fps, elapsed, batch.scene_cut
        )
        try:
            self._on_segment(segment)
        except Exception:  # the consumer's bug must not stop the uplink
            log.exception("on_segment failed")
            self.counters.inc("callback_errors")

    def _encode(self, batch: _Batch) -> tuple[bytes | None, EncoderKnobs]:
        """The segment's bytes and the knobs they were made with; None if they cannot fit."""
        fps = batch.settings.sampling_rate_fps
        knobs = batch.settings.knobs
        data = encode_segment(batch.frames, knobs, fps, preset=self._preset, threads=self._threads)
        if len(data) <= self._max_segment_bytes:
            return data, knobs
        kbps = bitrate_for_size(self._max_segment_bytes, len(batch.frames), fps)
        try:
            smaller = EncoderKnobs(
                bitrate_kbps=kbps, width=knobs.width, height=knobs.height, roi=knobs.roi
            )
        except ValidationError:  # below the lowest bitrate the protocol allows: cannot fit
            return None, knobs
        log.info(
            "segment of %d bytes exceeds %d: encoding it again at %.1f kbps",
            len(data),
            self._max_segment_bytes,
            kbps,
        )
        self.counters.inc("segments_reencoded")
        knobs = smaller
        data = encode_segment(batch.frames, knobs, fps, preset=self._preset, threads=self._threads)
        return (data if len(data) <= self._max_segment_bytes else None), knobs
