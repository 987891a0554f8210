"""The frame loop's next frames, read and scaled to the model's input while it runs inference.

Two threads work a few frames ahead. The reader takes frames from the source (decoding them)
at a low priority. The scaler scales each to the model's input at idle priority, on a core
inference leaves free: at any higher priority its swscale pass takes a core while both
inference threads of a small device want it, and every frame's inference waits for it. An
idle-priority thread starves while other work keeps the cores busy, so the frame loop waits
for the scaler only briefly (``SCALE_WAIT_S``): a frame it reaches unscaled, it scales itself
(``late_scale``), and the scaler skips that frame or drops what it finishes too late.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from edge_runtime.frames import Frame
from edge_runtime.priority import idle_thread_priority, lower_thread_priority
from edge_runtime.telemetry import FrameStats

# How long the frame loop waits for a scale under way before it scales the frame itself: about
# what one takes on a free core (under 1 ms for 768x576 here); longer, the scaler is starved.
SCALE_WAIT_S = 0.003


class _Pending:
    """A frame on its way to the frame loop, and its input if the scaler made it in time."""

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self._rgb: np.ndarray | None = None
        self._scaling = False
        self._taken = False
        self._scaled = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> bool:
        """The scaler's claim; False when the frame loop took the frame first."""
        with self._lock:
            self._scaling = not self._taken
            return self._scaling

    def offer(self, rgb: np.ndarray) -> None:
        """The scaler's input, kept unless the frame loop took the frame meanwhile."""
        with self._lock:
            if not self._taken:
                self._rgb = rgb
        self._scaled.set()

    def take(self, wait_s: float) -> np.ndarray | None:
        """The frame loop's claim: the scaler's input, waiting up to ``wait_s`` for one under
        way; None when there is none (the frame loop scales the frame itself)."""
        with self._lock:
            under_way = self._scaling
        if under_way:
            self._scaled.wait(wait_s)
        with self._lock:
            self._taken = True
            return self._rgb


class Prefetcher:
    """Frames with their inputs, in the source's order: ``with Prefetcher(...) as prepared``.

    ``input_size`` gives the model's (height, width) as it is now. Source errors reach the
    consumer at the point in the stream where they happened. ``stats`` gets the reader's and
    the scaler's CPU time (``source``, ``scale``) and the frame loop's wall time waiting for a
    frame (``wait``) and scaling one the scaler had not finished (``late_scale``).
    """

    _END = object()

    def __init__(
        self,
        frames: Iterable[Frame],
        input_size: Callable[[], tuple[int, int]],
        stats: FrameStats,
    ) -> None:
        self._frames = frames
        self._input_size = input_size
        self._stats = stats
        self._ready: queue.Queue[object] = queue.Queue(maxsize=2)  # to the frame loop
        self._unscaled: queue.Queue[_Pending | None] = queue.Queue()  # to the scaler
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="prefetch", daemon=True)
        self._scaler = threading.Thread(target=self._scale, name="prefetch-scale", daemon=True)

    def __enter__(self) -> Iterator[tuple[Frame, np.ndarray]]:
        self._reader.start()
        self._scaler.start()
        return self._drain()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._reader.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                self._ready.get(timeout=0.05)
        self._scaler.join()  # it ends after the frame it is scaling: the reader told it

    def _cpu(self, stage: str) -> contextlib.AbstractContextManager[None]:
        return self._stats.timed(stage, time.thread_time)

    def _read(self) -> None:
        lower_thread_priority()  # runs a frame ahead: it only needs the gaps inference leaves
        try:
            frames = iter(self._frames)
            while not self._stop.is_set():  # not a frame more once the frame loop has left
                with self._cpu("source"):
                    frame = next(frames, None)
                if frame is None:
                    self._put(self._END)
                    return
                pending = _Pending(frame)
                self._unscaled.put(pending)
                self._put(pending)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
        finally:
            self._unscaled.put(None)  # the scaler stops after what it was given

    def _scale(self) -> None:
        idle_thread_priority()
        while (pending := self._unscaled.get()) is not None and not self._stop.is_set():
            if not pending.start():  # the frame loop got there first
                continue
            height, width = self._input_size()
            with self._cpu("scale"):
                rgb = pending.frame.rgb(width, height)
            pending.offer(rgb)

    def _put(self, item: object) -> None:
        """Hand ``item`` to the frame loop, unless it leaves first."""
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _drain(self) -> Iterator[tuple[Frame, np.ndarray]]:
        while True:
            with self._stats.timed("wait"):
                item = self._ready.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, _Pending)
                rgb = item.take(SCALE_WAIT_S)
            if rgb is None:
                height, width = self._input_size()
                with self._stats.timed("late_scale"):
                    rgb = item.frame.rgb(width, height)
            yield item.frame, rgb
