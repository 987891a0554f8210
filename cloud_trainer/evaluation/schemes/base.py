"""What every scheme shares: its context (settings, models, caches, clocks, the run it records)
and the two halves the runner drives frame by frame: ``step`` (whatever the device and the
server do up to this frame) and ``labels`` (the device's output for a scored frame)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cloud_trainer.evaluation.cache import CachedTeacher, LabelCache
from cloud_trainer.evaluation.clock import Link, Trainer
from cloud_trainer.evaluation.config import EvalConfig
from cloud_trainer.evaluation.device import DeviceModel
from cloud_trainer.evaluation.record import SchemeRun
from cloud_trainer.evaluation.stream import ReplayStream, StreamFrame
from cloud_trainer.outgoing import Outgoing
from edge_runtime.frames import Frame
from shared_schema.messages import Update

DEVICE_ID = "eval-device"


@dataclass
class Context:
    config: EvalConfig
    initial_model: bytes
    teacher: CachedTeacher
    pretrained: LabelCache
    run: SchemeRun
    workdir: Path  # scratch space for the trainer's mirror and checkpoints
    stream: ReplayStream  # what is replayed (the oracle reads a video ahead)
    uplink: Link = field(init=False)
    downlink: Link = field(init=False)
    trainer: Trainer = field(init=False)

    def __post_init__(self) -> None:
        link = self.config.link
        self.uplink = Link(link.uplink_mbps)
        self.downlink = Link(link.downlink_mbps)
        self.trainer = Trainer(link.charge_compute)

    @contextmanager
    def compute(self) -> Iterator[list[float]]:
        """Measures server work: yields a one-element list that holds, on exit, its compute
        seconds (teacher labels served from the cache at the teacher's measured cost)."""
        teacher_wall, teacher_charged = self.teacher.wall_s, self.teacher.charged_s
        started = time.perf_counter()
        spent = [0.0]
        yield spent
        wall = time.perf_counter() - started - (self.teacher.wall_s - teacher_wall)
        spent[0] = wall + self.teacher.charged_s - teacher_charged
        self.run.trainer_s += spent[0]


class Scheme(ABC):
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @abstractmethod
    def step(self, frame: StreamFrame) -> None:
        """Everything the device and the server do up to ``frame``, before it is scored."""

    @abstractmethod
    def labels(self, frame: StreamFrame) -> np.ndarray:
        """The device's label map for ``frame`` (at the model's input size)."""

    def close(self) -> None:  # noqa: B027 (most schemes hold nothing to release)
        """Release what the scheme holds."""


class ModelScheme(Scheme):
    """A scheme whose device runs the student file, patched by the updates it receives."""

    def __init__(self, ctx: Context, flashed: bytes | None = None) -> None:
        """The device starts with the pretrained student, or with the file ``flashed``."""
        super().__init__(ctx)
        initial, pretrained = (
            (ctx.initial_model, ctx.pretrained) if flashed is None else (flashed, None)
        )
        self.device = DeviceModel(initial, pretrained, ctx.config.threads)

    def step(self, frame: StreamFrame) -> None:
        self.observe(frame)
        self.device.advance_to(frame.t)

    def observe(self, frame: StreamFrame) -> None:
        """The device's sampling and the server's work up to ``frame``."""

    def labels(self, frame: StreamFrame) -> np.ndarray:
        return self.device.labels(frame.rgb)

    def send_update(self, ready_s: float, compute_s: float, update: Outgoing) -> None:
        """Hand an update to the downlink once the trainer is done with it."""
        assert isinstance(update.msg, Update)
        leaves = self.ctx.trainer.finish(ready_s, compute_s)
        arrival = self.ctx.downlink.send(leaves, len(update.body))
        self.device.schedule(arrival, update.msg, update.body)
        self.ctx.run.downlink.append((arrival, len(update.body)))
        self.ctx.run.updates.append(arrival)

    def close(self) -> None:
        self.device.close()


def upload_jpeg(frame: StreamFrame, quality: int) -> tuple[int, Frame]:
    """A sample sent at once at full quality (Remote+Tracking, Just-In-Time): the JPEG's size
    and the picture the server decodes from it."""
    source = frame.frame
    bgr = cv2.cvtColor(source.rgb(source.width, source.height), cv2.COLOR_RGB2BGR)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return len(jpeg), Frame.from_rgb(frame.index, frame.t, decoded)
