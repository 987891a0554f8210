"""Frame sources: video files, network streams and V4L2 cameras through PyAV, and picamera2.

``open_source(spec)`` picks the source from the spec:

- ``picamera2:`` or ``picamera2:N``: camera N of a Raspberry Pi (needs the picamera2 package);
- ``/dev/videoN`` or ``v4l2:///dev/videoN``: a V4L2 camera;
- ``rtsp://``, ``rtsps://``, ``http(s)://``, ``rtmp(s)://``: a network stream;
- anything else (or ``file://``): a video file.

Every source yields ``Frame``s with indexes from 0 and non-decreasing timestamps in seconds from
the first frame: stream time (pts × time_base) for files and streams, sensor time for picamera2.
Settings that do not apply to a kind of source are ignored: ``realtime``, ``loop`` and ``strict``
concern files only (live sources are never paced and do not loop); ``size`` and ``fps`` concern
cameras only.

Bad input is normal input. A source that cannot be opened raises ``SourceError`` naming the source
and the reason; a stream that does not answer raises it after ``timeout_s``; packets that do not
decode are skipped, counted (``rejected.corrupt_packet``) and logged at most every few seconds.

A file that ends before the duration its header declares (an interrupted copy, a recording cut by
a power loss) still plays every frame it has: those frames are valid, and a device must keep
running. At its end the source logs a warning naming the file and both durations, sets
``truncated`` and counts ``truncated``; with ``loop=True`` it goes on replaying what there is.
Tools that must not silently use a short video (evaluation) pass ``strict=True``, which raises
``SourceError`` with the same message at that point instead.
"""

from __future__ import annotations

import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import av
import av.container

from edge_runtime.frames import Frame
from shared_schema.counters import Counters, RejectionLog

log = logging.getLogger(__name__)

NETWORK_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https", "rtmp", "rtmps"})
FALLBACK_FPS = 30.0  # frame spacing for a source that declares no rate and whose frames lack pts
PICAMERA_DEFAULT_SIZE = (640, 480)


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message names the source and the reason."""


class FrameSource(ABC):
    """An iterable of ``Frame``s; close it when done (or use it as a context manager).

    Iterate it from one thread; ``counters`` may be read from any thread (telemetry).
    """

    fps: float | None  # the nominal frame rate, where the source declares one
    live: bool  # a camera or a network stream: never paced, never looped

    def __init__(self, name: str) -> None:
        self.name = name
        self.counters = Counters()
        self.truncated = False  # a file that ended before its header said it would
        self._frames: Iterator[Frame] | None = None

    def __iter__(self) -> Iterator[Frame]:
        if self._frames is None:
            self._frames = self._counted()
        return self._frames

    def _counted(self) -> Iterator[Frame]:
        for frame in self._generate():
            self.counters.inc("frames")
            yield frame

    @abstractmethod
    def _generate(self) -> Iterator[Frame]: ...

    @abstractmethod
    def _release(self) -> None: ...

    def close(self) -> None:
        """Stop the iteration and release the device, stream or file. Idempotent."""
        if self._frames is not None:
            self._frames.close()
        self._release()

    @property
    def frames_read(self) -> int:
        return self.counters.get("frames")

    @property
    def corrupt_packets(self) -> int:
        return self.counters.get("rejected.corrupt_packet")

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_source(
    spec: str,
    *,
    realtime: bool = False,
    loop: bool = False,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    timeout_s: float = 5.0,
    options: Mapping[str, str] | None = None,
    strict: bool = False,
) -> FrameSource:
    """Open the source ``spec`` names (see the module docstring).

    ``realtime``: files yield each frame no earlier than its timestamp after the first frame.
    ``loop``: files restart at their end, timestamps and indexes carrying on.
    ``size`` (width, height) and ``fps``: what to ask a camera for.
    ``timeout_s``: how long opening, and each read from, a stream or device may block.
    ``options``: extra FFmpeg options, over the defaults (e.g. ``rtsp_transport=tcp``).
    ``strict``: a truncated file raises ``SourceError`` at its end instead of a warning.
    """
    extra = dict(options or {})
    if spec.startswith("picamera2:"):
        return Picamera2Source(spec, size=size, fps=fps)
    url = urlsplit(spec)
    scheme = url.scheme.lower()
    if scheme == "v4l2" or spec.startswith("/dev/video"):
        camera = {"video_size": f"{size[0]}x{size[1]}"} if size else {}
        if fps:
            camera["framerate"] = f"{fps:g}"
        device = url.path if scheme == "v4l2" else spec
        return PyAVSource(
            spec, device, av_format="v4l2", options={**camera, **extra}, timeout_s=timeout_s
        )
    if scheme in NETWORK_SCHEMES:
        # TCP interleaving: UDP RTP loses packets (smeared frames) behind NATs and lossy Wi-Fi.
        network = {"rtsp_transport": "tcp"} if scheme.startswith("rtsp") else {}
        return PyAVSource(spec, spec, options={**network, **extra}, timeout_s=timeout_s)
    path = url.path if scheme == "file" else spec
    return PyAVSource(
        spec,
        path,
        options=extra,
        timeout_s=timeout_s,
        file=_FileSettings(realtime=realtime, loop=loop, strict=strict),
    )


@dataclass(frozen=True, slots=True)
class _FileSettings:
    realtime: bool
    loop: bool
    strict: bool


class PyAVSource(FrameSource):
    """A file (when ``file`` settings are given), network stream or V4L2 device through PyAV."""

    def __init__(
        self,
        name: str,
        target: str,
        *,
        av_format: str | None = None,
        options: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
        file: _FileSettings | None = None,
    ) -> None:
        super().__init__(name)
        self._target = target
        self._format = av_format
        self._options = dict(options or {})
        self._timeout_s = timeout_s
        self._file = file
        self.live = file is None
        self._rejections = RejectionLog(self.counters, log)
        self._container: av.container.InputContainer | None = self._open()
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self._declared_s = _declared_duration(self._container, stream, self.fps)
        self._declared_frames = stream.frames  # 0 where the header does not say

    def _open(self) -> av.container.InputContainer:
        started = time.monotonic()
        try:
            container = av.open(
                self._target,
                format=self._format,
                options=self._options,
                timeout=(self._timeout_s, self._timeout_s),
            )
        except (av.error.FFmpegError, OSError) as exc:
            # Interrupted protocols fail in their own words (RTSP says "invalid data").
            timed_out = time.monotonic() - started >= self._timeout_s
            reason = self._describe(exc, timed_out)
            if isinstance(exc, av.error.InvalidDataError) and not timed_out:
                reason += " (not a video, or a damaged one: an MP4 cut short loses its index)"
            raise SourceError(f"cannot open {self.name!r}: {reason}") from exc
        if not container.streams.video:
            container.close()
            raise SourceError(f"cannot open {self.name!r}: it has no video stream")
        return container

    def _describe(self, exc: Exception, timed_out: bool = False) -> str:
        if timed_out or isinstance(exc, av.error.ExitError):  # how PyAV's timeout interrupts
            return f"no answer within {self._timeout_s:g} s"
        return getattr(exc, "strerror", None) or str(exc)

    def _release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _generate(self) -> Iterator[Frame]:
        interval = 1.0 / (self.fps or FALLBACK_FPS)
        pace = _Pacer() if self._file and self._file.realtime else None
        index, offset = 0, 0.0
        for loop in itertools.count():
            if self._container is None:  # the previous pass ended: replay from the start
                self._container = self._open()
                self.counters.inc("loops")
            end = offset
            for picture, stamp in self._decode_pass(interval):
                end = offset + stamp
                if pace is not None:
                    pace.wait(end)
                yield Frame(index, end, picture)
                index += 1
            self._release()
            if self._file is None:
                log.warning("%r: the stream ended after %d frames", self.name, index)
                return
            if loop == 0:
                self._check_complete(frames=index, reached_s=end + interval)
            if not self._file.loop:
                return
            offset = end + interval

    def _decode_pass(self, interval: float) -> Iterator[tuple[av.VideoFrame, float]]:
        """Decoded pictures of one pass over the source, with their time from its first frame."""
        assert self._container is not None
        stream = self._container.streams.video[0]
        origin: int | None = None
        last = 0.0
        count = 0
        try:
            for packet in self._container.demux(stream):
                try:
                    pictures = packet.decode()
                except av.error.FFmpegError as exc:
                    self._rejections.reject(
                        "corrupt_packet", f"{self.name!r}: skipped a packet: {self._describe(exc)}"
                    )
                    continue
                for picture in pictures:
                    if picture.pts is None or stream.time_base is None:
                        stamp = count * interval
                    else:
                        origin = picture.pts if origin is None else origin
                        stamp = float((picture.pts - origin) * stream.time_base)
                    last = max(stamp, last)  # reordered or broken pts must not run time backwards
                    count += 1
                    yield picture, last
        except av.error.FFmpegError as exc:
            raise SourceError(f"{self.name!r}: reading failed: {self._describe(exc)}") from exc

    def _check_complete(self, *, frames: int, reached_s: float) -> None:
        if frames == 0:
            raise SourceError(f"{self.name!r}: no frame of the file decodes")
        declared = self._declared_s
        if declared is None:
            return
        # Allow for rounding in headers and a frame or two lost to damage inside the file.
        tolerance = max(2.0 / (self.fps or FALLBACK_FPS), 0.01 * declared)
        if reached_s >= declared - tolerance:
            return
        self.truncated = True
        self.counters.inc("truncated")
        claim = f"{declared:.1f} s"
        if self._declared_frames:
            claim = f"{self._declared_frames} frames ({claim})"
        message = (
            f"{self.name!r} ended after {frames} frames ({reached_s:.1f} s); its header declares "
            f"{claim}: the file is truncated"
        )
        if self._file is not None and self._file.strict:
            raise SourceError(message)
        log.warning("%s; playing the frames it has", message)


def _declared_duration(
    container: av.container.InputContainer, stream: av.VideoStream, fps: float | None
) -> float | None:
    """The longest duration the headers claim, or None where they claim none.

    Every claim counts because a cut AVI loses its index and FFmpeg then estimates the duration
    from the file size; the frame count in the AVI header still tells the truth.
    """
    claims = []
    if stream.duration and stream.time_base:
        claims.append(float(stream.duration * stream.time_base))
    if container.duration:
        claims.append(container.duration / av.time_base)
    if stream.frames and fps:
        claims.append(stream.frames / fps)
    return max(claims, default=None)


class _Pacer:
    """Holds each frame until its timestamp, counted from the first frame's, has come."""

    def __init__(self) -> None:
        self._zero: float | None = None

    def wait(self, timestamp: float) -> None:
        now = time.monotonic()
        if self._zero is None:
            self._zero = now - timestamp
        delay = self._zero + timestamp - now
        if delay > 0:  # a late consumer gets the next frame at once: files never skip frames
            time.sleep(delay)


class Picamera2Source(FrameSource):
    """A Raspberry Pi camera through picamera2, imported only when such a source is opened."""

    def __init__(
        self, spec: str, *, size: tuple[int, int] | None = None, fps: float | None = None
    ) -> None:
        super().__init__(spec)
        self.fps = fps
        self.live = True
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError(
                f"cannot open {spec!r}: the picamera2 package is not installed "
                "(on Raspberry Pi OS: apt install python3-picamera2)"
            ) from exc
        number = spec.partition(":")[2] or "0"
        try:
            self._camera = Picamera2(int(number))
            config = self._camera.create_video_configuration(
                main={"size": tuple(size or PICAMERA_DEFAULT_SIZE), "format": "RGB888"},
                controls={"FrameRate": fps} if fps else {},
            )
            self._camera.configure(config)
            self._camera.start()
        except Exception as exc:  # picamera2 raises assorted types for a missing or busy camera
            raise SourceError(f"cannot open {spec!r}: {exc}") from exc

    def _generate(self) -> Iterator[Frame]:
        origin: int | None = None
        last = 0.0
        for index in itertools.count():
            request = self._camera.capture_request()
            try:
                pixels = request.make_array("main")
                sensor_ns = request.get_metadata().get("SensorTimestamp") or time.monotonic_ns()
            finally:
                request.release()  # the camera reuses a few buffers: hold none past the copy
            origin = sensor_ns if origin is None else origin
            # picamera2's "RGB888" is stored B, G, R per pixel (libcamera's naming).
            picture = av.VideoFrame.from_ndarray(pixels, format="bgr24")
            last = max(last, (sensor_ns - origin) / 1e9)
            yield Frame(index, last, picture)

    def _release(self) -> None:
        self._camera.close()
