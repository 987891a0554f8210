"""Remote+Tracking (seed 002 §4.1): the device sends a full-quality sample every second (JPEG
q95, at once: buffering would make the labels stale), the server sends back the teacher's label
map (zstd-compressed uint8), and the device carries the latest label map forward to every frame
with Farneback optical flow, labels warped nearest-neighbour.

The device tracks from one scored frame to the next (every frame with ``--eval-stride 1``, as a
device would); a label map that arrives is carried in one step from the sample it belongs to
(the device kept that frame) to the current frame. Before the first map arrives the device has
nothing to show but background.
"""

from __future__ import annotations

import heapq
import itertools

import cv2
import numpy as np
import zstandard

from cloud_trainer.evaluation.config import TrackingSettings
from cloud_trainer.evaluation.schemes.base import Context, Scheme, upload_jpeg
from cloud_trainer.evaluation.stream import StreamFrame
from edge_runtime.sampler import Sampler


def farneback_flow(current: np.ndarray, previous: np.ndarray, s: TrackingSettings) -> np.ndarray:
    """(H, W, 2) flow from the grey ``current`` frame back to ``previous``: pixel (y, x) of
    ``current`` shows what ``previous`` had at (y + fy, x + fx)."""
    return cv2.calcOpticalFlowFarneback(
        current,
        previous,
        None,
        pyr_scale=0.5,
        levels=s.levels,
        winsize=s.winsize,
        iterations=s.iterations,
        poly_n=s.poly_n,
        poly_sigma=s.poly_sigma,
        flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN,
    )


def warp_labels(labels: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The label map moved along ``flow`` (nearest neighbour: labels are not interpolable)."""
    height, width = labels.shape
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(
        labels,
        xs + flow[..., 0],
        ys + flow[..., 1],
        interpolation=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_REPLICATE,
    )


def track(
    labels: np.ndarray, previous: np.ndarray, current: np.ndarray, s: TrackingSettings
) -> np.ndarray:
    """``labels`` of the grey frame ``previous``, carried to the grey frame ``current``."""
    return warp_labels(labels, farneback_flow(current, previous, s))


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class RemoteTracking(Scheme):
    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.settings = ctx.config.tracking
        rate = self.settings.sample_fps
        self.sampler = Sampler(rate, min_fps=rate, max_fps=rate)
        self._pending: list[tuple[float, int, np.ndarray, np.ndarray]] = []
        self._order = itertools.count()
        self._labels: np.ndarray | None = None  # the device's current map, and its frame
        self._grey: np.ndarray | None = None
        self._compressor = zstandard.ZstdCompressor(level=3)

    def step(self, frame: StreamFrame) -> None:
        if not self.sampler.offer(frame.t):
            return
        run = self.ctx.run
        size, picture = upload_jpeg(frame, self.settings.jpeg_quality)
        run.uplink.append((frame.t, size))
        received = self.ctx.uplink.send(frame.t, size)
        height, width = self.ctx.teacher.input_size
        with self.ctx.compute() as spent:
            labels = self.ctx.teacher.label(picture.rgb(width, height)[None])[0].astype(np.uint8)
            body = self._compressor.compress(labels.tobytes())
        arrival = self.ctx.downlink.send(self.ctx.trainer.finish(received, spent[0]), len(body))
        run.downlink.append((arrival, len(body)))
        run.updates.append(arrival)
        heapq.heappush(self._pending, (arrival, next(self._order), labels, grey(frame.rgb)))

    def labels(self, frame: StreamFrame) -> np.ndarray:
        current = grey(frame.rgb)
        arrived = None
        while self._pending and self._pending[0][0] <= frame.t:
            arrived = heapq.heappop(self._pending)  # the newest that has arrived wins
        if arrived is not None:
            _, _, labels, sample_grey = arrived
            self._labels = track(labels, sample_grey, current, self.settings)
        elif self._labels is not None:
            assert self._grey is not None
            self._labels = track(self._labels, self._grey, current, self.settings)
        self._grey = current
        if self._labels is None:
            return np.zeros(current.shape, np.uint8)
        return self._labels
