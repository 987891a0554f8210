"""Just-In-Time (Mullapudi et al., ICCV 2019, as seed 002 §4.1 runs it against AMS).

Key frames are sent at full quality (JPEG q95) as soon as they are taken. On each, the server
measures the student's training accuracy (mIoU against the teacher on that frame) and trains on
that one frame until it reaches the threshold, at most ``max_updates`` steps; any training
makes an update (qdelta, through a model mirror as in the live trainer). The key frame stride
doubles when the threshold was met and halves when not, between 8 and 64 frames at 30 fps, so
at most one update every 266 ms. Each update is one coordinate-descent phase: gradient-guided
γ of the parameters, as seed 002 runs this baseline.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cloud_trainer.ams.coordinate_descent import CoordinateAdam, Selection
from cloud_trainer.ams.training import class_weights
from cloud_trainer.evaluation.config import JitSettings
from cloud_trainer.evaluation.schemes.base import DEVICE_ID, Context, ModelScheme, upload_jpeg
from cloud_trainer.evaluation.stream import StreamFrame
from cloud_trainer.mirror import ModelMirror
from cloud_trainer.student import import_tflite
from shared_schema.messages import UpdateFormat
from shared_schema.metrics import ClassSubset, miou


def train_until(
    threshold: float, max_updates: int, accuracy: Callable[[], float], step: Callable[[], None]
) -> tuple[int, float]:
    """JITNet's inner loop: steps taken and the last accuracy measured."""
    steps, reached = 0, accuracy()
    while reached < threshold and steps < max_updates:
        step()
        steps += 1
        reached = accuracy()
    return steps, reached


def next_stride(stride_s: float, met: bool, settings: JitSettings) -> float:
    """Longer strides while the student keeps up, shorter ones when it does not."""
    if met:
        return min(2 * stride_s, settings.max_stride_s)
    return max(stride_s / 2, settings.min_stride_s)


class JustInTime(ModelScheme):
    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.settings = ctx.config.jit
        self.training = ctx.config.ams.training
        self.student = import_tflite(ctx.initial_model).to(self.training.device)
        self.optimizer = CoordinateAdam(
            list(self.student.parameters()),
            gamma=self.settings.gamma,
            lr=self.settings.lr,
            betas=self.training.betas,
            selection=Selection.GRADIENT,
            seed=ctx.config.seed,
        )
        self.mirror = ModelMirror(ctx.initial_model, device_id=DEVICE_ID)
        self.subset = ClassSubset(self.student.num_classes)
        self.stride_s = self.settings.min_stride_s
        self._next_key: float | None = None
        ctx.run.extra["ams_fp16_bytes"] = 0
        ctx.run.extra["full_fp16_bytes_per_update"] = 2 * self.student.parameter_count
        ctx.run.extra["key_frames"] = 0

    def observe(self, frame: StreamFrame) -> None:
        if self._next_key is None:
            self._next_key = frame.t
        if frame.t >= self._next_key:
            self._key_frame(frame)
            self._next_key = frame.t + self.stride_s

    def _key_frame(self, frame: StreamFrame) -> None:
        run, s = self.ctx.run, self.settings
        size, picture = upload_jpeg(frame, s.jpeg_quality)
        run.uplink.append((frame.t, size))
        run.extra["key_frames"] += 1
        received = self.ctx.uplink.send(frame.t, size)
        height, width = self.student.input_size
        with self.ctx.compute() as spent:
            rgb = picture.rgb(width, height)  # whole key frame, at the scale the device sees
            teacher = self.ctx.teacher.label(rgb[None])[0]
            self.subset.observe(teacher)
            steps, reached = self._distill(rgb, teacher)
            self.stride_s = next_stride(self.stride_s, reached >= s.threshold, s)
            if steps:
                base = self.mirror.data
                update = self.mirror.advance(self.student, UpdateFormat.QDELTA)
        if steps:
            self.send_update(received, spent[0], update)
            # for the report only (not charged): the same update in seed 002's encoding
            fp16 = ModelMirror(base, device_id=DEVICE_ID).body_for(
                self.student, UpdateFormat.AMS_FP16, self.optimizer.mask
            )
            run.extra["ams_fp16_bytes"] += len(fp16)

    def _distill(self, rgb: np.ndarray, labels: np.ndarray) -> tuple[int, float]:
        """Train on one frame until its mIoU passes the threshold (or steps run out)."""
        device = self.training.device
        x = torch.from_numpy(rgb[None]).to(device)
        target = torch.from_numpy(labels[None].astype(np.int64)).to(device)
        weights = class_weights(self.subset.seen, self.student.num_classes, device)
        classes = self.subset.classes
        loss: list[torch.Tensor] = []
        phase_open = False  # one coordinate-descent phase (one mask) per update

        def accuracy() -> float:
            logits = self.student(x)
            loss[:] = [F.cross_entropy(logits, target, weight=weights)]
            predicted = logits.argmax(1)[0].detach().cpu().numpy()
            return miou(predicted, labels, classes)

        def step() -> None:
            nonlocal phase_open
            if not phase_open:
                self.optimizer.begin_phase()
                phase_open = True
            self.student.zero_grad(set_to_none=True)
            loss[0].backward()
            self.optimizer.step()

        self.student.train()
        result = train_until(self.settings.threshold, self.settings.max_updates, accuracy, step)
        self.student.eval()
        return result
