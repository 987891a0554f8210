"""AMS and One-Time: the live trainer's own ``Session`` behind the device's own uplink.

The device samples with the runtime's ``Sampler`` at the rate the trainer last set, buffers the
samples of one T_update interval and encodes them with ``encode_segment`` (H.264 at 200 kbps),
exactly as its segment buffer does; at the end of the interval the segment travels as a real
protocol envelope into ``Session.deliver``, and ``Session.step`` labels it with the teacher,
runs ASR/ATR, trains one phase and makes the update with its model mirror, as in the daemon.
Controls (sampling rate, T_update) take effect from the next interval; an update reaches the
device at the end of the interval plus its transfer time (plus charged compute). With
``oneadapt`` on, the session also sends the teacher's DNNGrad on each segment's last frame and
the device steps its encoder knobs on it (``edge_runtime.oneadapt.step``) for the next segment.

One-Time is the same machinery with one interval of ``window_s`` at 1 fps, one phase that
trains every parameter (γ = 1) for its iterations, and no further sampling.
"""

from __future__ import annotations

import itertools

from cloud_trainer.ams.asr import AsrConfig
from cloud_trainer.ams.atr import AtrConfig
from cloud_trainer.ams.gate import GateConfig
from cloud_trainer.ams.rebase import RebaseConfig
from cloud_trainer.config import CheckpointConfig, StudentConfig, TrainerConfig, UpdatesConfig
from cloud_trainer.evaluation.cache import ScoringTeacher
from cloud_trainer.evaluation.config import AmsSettings
from cloud_trainer.evaluation.schemes.base import DEVICE_ID, Context, ModelScheme
from cloud_trainer.evaluation.stream import StreamFrame
from cloud_trainer.mirror import ModelMirror
from cloud_trainer.oneadapt.config import OneAdaptConfig
from cloud_trainer.oneadapt.dnngrad import DnnGrad
from cloud_trainer.outgoing import Outgoing
from cloud_trainer.recl.reuse import ModelReuse
from cloud_trainer.session import Session
from cloud_trainer.student import import_tflite, saturated_weights
from cloud_trainer.student.float16 import for_precision
from cloud_trainer.teacher import TeacherConfig, load_teacher
from edge_runtime.frames import Frame
from edge_runtime.h264 import encode_segment
from edge_runtime.oneadapt.step import step
from edge_runtime.runtime import UPDATE_FORMATS
from edge_runtime.sampler import Sampler
from edge_runtime.scene_cut import SceneCutDetector
from edge_runtime.segment_buffer import EncodedSegment
from shared_schema.envelope import decode, encode
from shared_schema.gradient import GradientMap
from shared_schema.messages import (
    Control,
    EncoderKnobs,
    Gradient,
    ModelFormat,
    Update,
    UpdateFormat,
)

_BOOT_ID = "e0a1" * 4


class SessionScheme(ModelScheme):
    def __init__(
        self,
        ctx: Context,
        settings: AmsSettings,
        *,
        window_s: float | None = None,
        device_id: str = DEVICE_ID,
        reuse: ModelReuse | None = None,
    ) -> None:
        """``reuse``: the zoo shared by a fleet's devices; with ``recl.enabled`` and none given,
        the device has a zoo of its own."""
        # flashed with the student as the trainer has it run: the int8 file or its float16 form
        super().__init__(ctx, for_precision(ctx.initial_model, settings.precision))
        asr, atr = settings.asr, settings.atr
        kl = settings.training.distillation == "kl"
        teacher = TeacherConfig(
            kind="torch" if kl else "litert",
            model=ctx.config.teacher_model,
            threads=ctx.config.threads,
        )
        config = TrainerConfig(
            student=StudentConfig(model=ctx.config.student_model, precision=settings.precision),
            teacher=teacher,
            training=settings.training,
            asr=asr,
            atr=atr,
            gate=settings.gate,
            rebase=settings.rebase,
            recl=settings.recl,
            oneadapt=OneAdaptConfig(enabled=settings.oneadapt.enabled),
            checkpoint=CheckpointConfig(directory=ctx.workdir),
            # Trace-driven: update bodies go to the evaluation's device model, not over a
            # network, so there is nothing to sign.
            updates=UpdatesConfig(allow_unsigned=True, format=settings.update_format),
        )
        # labels from the cache; KL's scores from the teacher file in torch, on the samples
        labels = ScoringTeacher(ctx.teacher, load_teacher(teacher)) if kl else ctx.teacher
        self._own_zoo = None
        if reuse is None and settings.recl.enabled:
            reuse = self._own_zoo = ModelReuse(
                settings.recl, ctx.initial_model, config.zoo_directory, ctx.config.threads
            )
        self.device_id = device_id
        dnngrad = None
        if settings.oneadapt.enabled:
            dnngrad = DnnGrad(import_tflite(ctx.config.teacher_model), config.oneadapt.threshold)
        self.session = Session(device_id, config, labels, ctx.initial_model,
                               directory=ctx.workdir / device_id, reuse=reuse,
                               dnngrad=dnngrad)  # fmt: skip
        # what the runtime's hello says a TFLite device applies
        accepted = UPDATE_FORMATS[ModelFormat.TFLITE]
        self.session.device.update_formats = tuple(f.value for f in accepted)
        self.sampler = Sampler(asr.initial_fps, min_fps=asr.min_fps, max_fps=asr.max_fps)
        self.cuts = SceneCutDetector.of(settings.scene_cut)
        self.t_update_s = atr.tau_min_s if window_s is None else window_s
        self.window_s = window_s
        self.knobs = EncoderKnobs(bitrate_kbps=settings.segment_kbps)
        self._oneadapt = settings.oneadapt
        self._knob_bounds = settings.knobs
        self._samples: list[Frame] = []
        self._uploaded: dict[float, Frame] = {}  # the last segment's, for a DNNGrad to find
        self._interval_end: float | None = None
        self._sampling_until = float("inf")
        self._seq = itertools.count()
        ctx.run.extra["ams_fp16_bytes"] = 0
        ctx.run.extra["phases_gated"] = 0
        ctx.run.extra["rebases"] = 0
        ctx.run.extra["reuses"] = 0  # training went on from an expert of the zoo (RECL)
        ctx.run.extra["rebased_at"] = []  # end of the interval that moved it to the base
        ctx.run.extra["reused_at"] = []  # ... to an expert of the zoo
        ctx.run.extra["scene_cuts"] = 0  # frames the device saw start a new scene
        ctx.run.extra["scene_cut_at"] = []  # ... and when
        ctx.run.extra["saturated_weights"] = 0  # trained values the int8 grid clamps, at the end
        ctx.run.extra["sampling_fps"] = [(0.0, self.sampler.rate_fps)]
        ctx.run.extra["t_update_s"] = [(0.0, self.t_update_s)]
        ctx.run.extra["gradient_bytes"] = 0  # OneAdapt's DNNGrad bodies sent down
        ctx.run.extra["knobs"] = []  # (from s, CRF or None, width or None): OneAdapt's steps

    def observe(self, frame: StreamFrame) -> None:
        if self._interval_end is None:
            self._interval_end = frame.t + self.t_update_s
            if self.window_s is not None:
                self._sampling_until = frame.t + self.window_s
        while frame.t >= self._interval_end:
            self._end_interval(self._interval_end)
            self._interval_end += self.t_update_s
        if frame.t >= self._sampling_until:
            return
        cut = self._scene_cut(frame)
        if not self.sampler.offer(frame.t, cut=cut):
            return
        if not cut:
            self._samples.append(frame.on_clock())
            return
        # as the runtime's segment buffer: the samples so far go up as they are, the cut's
        # frame right after them alone; the trainer has both before it works on either
        self._upload(frame.t)
        self._samples = [frame.on_clock()]
        self._upload(frame.t, scene_cut=True)
        self._answer(frame.t)
        self._interval_end = frame.t + self.t_update_s

    def _scene_cut(self, frame: StreamFrame) -> bool:
        """The device's detector (``edge_runtime.scene_cut``) on the frame (the rate it moves to
        is recorded with the control the trainer answers every cut with)."""
        if self.cuts is None or not self.cuts.cut(frame.on_clock()):
            return False
        self.ctx.run.extra["scene_cuts"] += 1
        self.ctx.run.extra["scene_cut_at"].append(frame.t)
        return True

    def _end_interval(self, end_s: float) -> None:
        if self._upload(end_s):
            self._answer(end_s)

    def _answer(self, end_s: float) -> None:
        """The trainer's work on what it was sent, and its replies to the device."""
        with self.ctx.compute() as spent:
            replies = self.work()
        self.handle(end_s, spent[0], replies)

    def _upload(self, end_s: float, scene_cut: bool = False) -> bool:
        """The interval's samples as one H.264 segment into the session; False if none."""
        if not self._samples:
            return False
        frames, self._samples = self._samples, []
        self._uploaded = {f.timestamp: f for f in frames}
        rate = self.sampler.rate_fps
        h264 = encode_segment(frames, self.knobs, fps=rate)
        segment = EncodedSegment.of(h264, frames, self.knobs, rate, scene_cut=scene_cut).message()
        self.ctx.run.uplink.append((end_s, len(h264)))
        seq = next(self._seq)
        wire = encode(segment, device_id=self.device_id, seq=seq, boot=_BOOT_ID, body=h264)
        self.session.deliver(decode(wire))
        return True

    def work(self, *, until_phase: bool = False) -> list[Outgoing]:
        """The session's steps while it has work (``until_phase``: stopping short of a phase,
        which a fleet's trainer runs when its turn comes)."""
        replies: list[Outgoing] = []
        while self.session.has_work and not (until_phase and self.session.trains_next):
            replies += self.session.step()
        return replies

    def handle(self, end_s: float, compute_s: float, replies: list[Outgoing]) -> None:
        """The session's figures into the run; its controls and updates to the device."""
        extra, stats = self.ctx.run.extra, self.session.stats
        extra["phases_gated"] = stats.phases_gated
        for count, series in (("rebases", "rebased_at"), ("reuses", "reused_at")):
            if getattr(stats, count) > extra[count]:
                extra[series].append(end_s)
                extra[count] = getattr(stats, count)
        if self.session.config.student.precision == "int8":  # float16 files clamp nothing
            extra["saturated_weights"] = saturated_weights(self.session.student)
        fp16 = [self._ams_fp16_size(r) for r in replies if isinstance(r.msg, Update)]
        extra["ams_fp16_bytes"] += sum(fp16)
        for reply in replies:
            if isinstance(reply.msg, Control):
                self._control(end_s, reply.msg)
            elif isinstance(reply.msg, Update):
                self.send_update(end_s, compute_s, reply)
            elif isinstance(reply.msg, Gradient):
                self._step_knobs(end_s, reply.msg, reply.body)

    def _step_knobs(self, at_s: float, msg: Gradient, body: bytes) -> None:
        """The device's OneAdapt step on the trainer's DNNGrad, for the next segment."""
        self.ctx.run.extra["gradient_bytes"] += len(body)
        frame = self._uploaded.get(msg.timestamp)
        if frame is None:
            return
        grad = GradientMap.of_bytes(body, msg.scale, msg.width, msg.height)
        self.knobs, _ = step(self._oneadapt, self._knob_bounds, frame, self.knobs, grad,
                             msg.utility, self.sampler.rate_fps)  # fmt: skip
        self.ctx.run.extra["knobs"].append((at_s, self.knobs.crf, self.knobs.width))

    def _control(self, at_s: float, control: Control) -> None:
        """The device applies the trainer's rates from the next interval on."""
        rate = self.sampler.set_rate(control.sampling_rate_fps)
        self.t_update_s = control.t_update_s
        self.ctx.run.extra["sampling_fps"].append((at_s, rate))
        self.ctx.run.extra["t_update_s"].append((at_s, self.t_update_s))

    def close(self) -> None:
        super().close()
        if self._own_zoo is not None:
            self._own_zoo.close()

    def _ams_fp16_size(self, reply: Outgoing) -> int:
        """The same update in seed 002's own encoding (fp16 values + gzip'd mask), for the
        report: the mirror's base version re-encoded with this phase's mask. A switch to a
        chosen model (RECL) has no phase mask: its own bytes."""
        assert isinstance(reply.msg, Update)
        mask = self.session.optimizer.mask
        if not mask:
            return len(reply.body)
        base = self.session.mirror.versions()[reply.msg.base_version]
        mirror = ModelMirror(base, device_id=self.device_id)
        return len(mirror.body_for(self.session.student, UpdateFormat.AMS_FP16, mask))


def ams(ctx: Context, settings: AmsSettings | None = None) -> SessionScheme:
    """AMS as configured, or with ``settings`` (a variant, the ablation)."""
    return SessionScheme(ctx, settings or ctx.config.ams)


def one_time(ctx: Context) -> SessionScheme:
    """Seed 002 §4.1: fine-tune the entire model on the first 60 s, send it once."""
    settings, ams_settings = ctx.config.one_time, ctx.config.ams
    training = ams_settings.training.model_copy(
        update={"gamma": 1.0, "iterations": settings.iterations, "lr": settings.lr}
    )
    once = AmsSettings(
        training=training,
        asr=AsrConfig(enabled=False),  # 1 fps throughout
        atr=AtrConfig(enabled=False),
        gate=GateConfig(enabled=False),  # one phase, on every sample of the window
        rebase=RebaseConfig(enabled=False),
        segment_kbps=ams_settings.segment_kbps,
    )
    return SessionScheme(ctx, once, window_s=settings.window_s)


def no_custom(ctx: Context) -> ModelScheme:
    """The pretrained student, never updated."""
    return ModelScheme(ctx)
