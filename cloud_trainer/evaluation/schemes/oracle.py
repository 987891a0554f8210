"""The headroom: an oracle student per video, trained offline on all of that video's teacher
labels (every scored frame) and scored on those same frames.

Not a scheme a device could run (it sees a video before scoring it, and its training costs
are not charged): it shows how much a student of this size and precision can agree with the
teacher on each video, so the report can say how much of that gain AMS takes. Training is
AMS's own phase with every parameter (γ = 1) for ``steps`` Adam steps from the pretrained
student, on random crops as AMS trains; the model the device would run is the int8 file at
the frozen scales, scored through LiteRT.

``FloatOracle`` (``oracle_float``) trains and scores the same network in plain float32, no
grid at all: the gap between the two is what the device's frozen-scale int8 costs at best.
"""

from __future__ import annotations

import numpy as np
import torch

from cloud_trainer.ams.training import new_optimizer, train_phase
from cloud_trainer.evaluation.schemes.base import DEVICE_ID, Context, Scheme
from cloud_trainer.evaluation.stream import StreamFrame
from cloud_trainer.mirror import ModelMirror
from cloud_trainer.sample_buffer import Sample, SampleBuffer
from cloud_trainer.student import TFLiteStudent, import_tflite
from edge_runtime.backends.base import Engine
from edge_runtime.backends.litert import LiteRtConfig
from shared_schema.metrics import ClassSubset


class Oracle(Scheme):
    fake_quant = True  # trained on the file's frozen grids, as AMS trains

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._video: int | None = None
        self._engine: Engine | None = None
        ctx.run.extra["oracle_final_loss"] = []

    def step(self, frame: StreamFrame) -> None:
        if frame.video != self._video:  # the first frame of the next video
            self._video = frame.video
            self.close()
            self.use(self._train(frame))

    def use(self, student: TFLiteStudent) -> None:
        """Run ``student`` as the device would: its int8 file through LiteRT."""
        data = ModelMirror(self.ctx.initial_model, device_id=DEVICE_ID).candidate(student)
        self._engine = LiteRtConfig(threads=self.ctx.config.threads).open(data)

    def labels(self, frame: StreamFrame) -> np.ndarray:
        assert self._engine is not None
        return self._engine.infer(frame.rgb).astype(np.uint8)

    def _train(self, first: StreamFrame) -> TFLiteStudent:
        """A student trained on every scored frame of ``first``'s video."""
        ctx, settings = self.ctx, self.ctx.config.oracle
        student = import_tflite(ctx.initial_model)
        student.fake_quant = self.fake_quant
        buffer = SampleBuffer(horizon_s=float("inf"))
        subset = ClassSubset(student.num_classes)
        for frame in ctx.stream.replay_video(first):
            if frame.evaluated:
                labels = ctx.teacher.label(frame.rgb[None])[0].astype(np.uint8)
                subset.observe(labels)
                buffer.add(Sample(frame.t, frame.rgb, labels))
        training = ctx.config.ams.training.model_copy(
            update={"gamma": 1.0, "iterations": settings.steps, "lr": settings.lr}
        )
        rng = np.random.default_rng(ctx.config.seed + first.video)
        result = train_phase(
            student, new_optimizer(student, training), buffer, subset.seen, training, rng
        )
        ctx.run.extra["oracle_final_loss"].append(result.last_loss)
        return student

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class FloatOracle(Oracle):
    fake_quant = False

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._student: TFLiteStudent | None = None

    def use(self, student: TFLiteStudent) -> None:
        self._student = student.eval()

    @torch.no_grad()
    def labels(self, frame: StreamFrame) -> np.ndarray:
        assert self._student is not None
        return self._student.labels(frame.rgb[None])[0].numpy().astype(np.uint8)
