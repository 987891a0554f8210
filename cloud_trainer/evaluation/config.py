"""What an evaluation runs with: the stream, the links, each scheme's settings, and the two
presets (``quick`` for CI, ``paper`` for seed 002 §4.1's settings on a CPU)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud_trainer.ams.asr import AsrConfig
from cloud_trainer.ams.atr import AtrConfig
from cloud_trainer.ams.gate import GateConfig
from cloud_trainer.ams.rebase import RebaseConfig
from cloud_trainer.ams.training import TrainingConfig
from cloud_trainer.evaluation.names import PRESETS
from cloud_trainer.recl.config import ReclConfig
from cloud_trainer.student.float16 import Precision
from edge_runtime.profile import KnobsSection, OneAdaptSection
from edge_runtime.scene_cut import SceneCutSection
from shared_schema.config_files import ConfigFileError, validation_message
from shared_schema.messages import UpdateFormat
from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError


@dataclass(frozen=True)
class Geometry:
    """What an evaluation runs at, read from its two models."""

    input_size: tuple[int, int]  # (height, width) frames are scaled to
    num_classes: int

    @classmethod
    def of(cls, student: Path, teacher: Path) -> Geometry:
        """The student's, which must be the teacher's: every scored pixel compares their labels.
        A model that cannot be read, or a pair that disagrees, is a ``ConfigFileError``."""
        ours, theirs = _read_model(student, "--student"), _read_model(teacher, "--teacher")
        geometry = cls(ours.input_size, ours.num_classes)
        if (theirs.input_size, theirs.num_classes) != (geometry.input_size, geometry.num_classes):
            raise ConfigFileError(
                f"{student} takes {size_text(ours.input_size)} frames and scores"
                f" {ours.num_classes} classes, {teacher} {size_text(theirs.input_size)} and"
                f" {theirs.num_classes}: pass a --student and --teacher that agree"
            )
        return geometry


def _read_model(path: Path, flag: str) -> TFLiteFile:
    try:
        return TFLiteFile(path.read_bytes())
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror}; check {flag}") from exc
    except TFLiteFormatError as exc:
        raise ConfigFileError(f"{path}: {exc}; {flag} takes a quantized .tflite") from exc


def size_text(size: Sequence[int]) -> str:
    """(height, width) as a person reads it: ``513x513``."""
    return "x".join(str(n) for n in size)


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamSettings(_Settings):
    clip_s: float | None = Field(None, gt=0.0)  # keep only the first clip_s seconds of each video
    # recurring scenes (``stream.rotation``): the next rotation_s of each video in turn, rounds
    # times over; None: each video once, whole (or its clip)
    rotation_s: float | None = Field(None, gt=0.0)
    rounds: int = Field(2, ge=1, le=1000)
    eval_stride: int = Field(1, ge=1)  # score every k-th frame of the stream


class LinkSettings(_Settings):
    """The network and the trainer's clock. The paper measures "under no significant network
    limitations"; 20 Mbps links make transfer times small but not zero."""

    uplink_mbps: float = Field(20.0, gt=0.0)
    downlink_mbps: float = Field(20.0, gt=0.0)
    # Measured trainer compute × this factor is added before a reply can leave (0: the paper's
    # emulation, where an update leaves at the end of the T_update interval that produced it).
    charge_compute: float = Field(0.0, ge=0.0)


class AmsSettings(_Settings):
    """Seed 002 §4.1: T_horizon 240 s, K 20, γ 5 %, gradient-guided, ASR 0.1-1 fps every 10 s,
    T_update 10 s, segments in H.264 at 200 kbps; the project's rebase rule on, its gate off."""

    training: TrainingConfig = TrainingConfig()
    asr: AsrConfig = AsrConfig()
    atr: AtrConfig = AtrConfig()
    gate: GateConfig = GateConfig()
    rebase: RebaseConfig = RebaseConfig()
    segment_kbps: float = Field(200.0, ge=10.0)
    # what the device runs ([student] precision) and how updates reach it ([updates] format)
    precision: Precision = "int8"
    update_format: UpdateFormat = UpdateFormat.QDELTA
    recl: ReclConfig = ReclConfig()  # the zoo and the scheduler (fleet runs share one zoo)
    # OneAdapt on the uplink (seed 000): the device's [oneadapt] and [knobs]; where enabled the
    # trainer sends its DNNGrad after each segment and the device steps its encoder knobs from
    # ``segment_kbps``, else the segments stay at ``segment_kbps``
    oneadapt: OneAdaptSection = OneAdaptSection()
    knobs: KnobsSection = KnobsSection()
    # the device's [scene_cut]: a cut sends its frame up at once (edge_runtime.scene_cut)
    scene_cut: SceneCutSection = SceneCutSection()


class OneTimeSettings(_Settings):
    """Fine-tune every parameter (Adam) on the samples of the first ``window_s`` (1 fps), once."""

    window_s: float = Field(60.0, gt=0.0)
    iterations: int = Field(120, ge=1)  # ~8 passes over 60 samples at batch 4
    lr: float = Field(1e-4, gt=0.0)  # AMS's (TrainingConfig explains why not 1e-3)


class TrackingSettings(_Settings):
    """Remote+Tracking (seed 002 §4.1): teacher labels of 1 fps samples sent down, propagated
    on the device with OpenCV's Farneback flow (5 iterations, Gaussian window, 3 pyramid levels,
    poly_n 5). The paper's window of 64 px was at 1024x512; the flow here runs at the model's
    input size (513x513 for the Coral models), so the window scales to 32 px."""

    sample_fps: float = Field(1.0, gt=0.0)
    jpeg_quality: int = Field(95, ge=1, le=100)  # uplink: full-quality samples, sent at once
    winsize: int = Field(32, ge=3)
    levels: int = Field(3, ge=1)
    iterations: int = Field(5, ge=1)
    poly_n: Literal[5, 7] = 5
    poly_sigma: float = Field(1.1, gt=0.0)


class JitSettings(_Settings):
    """Just-In-Time (Mullapudi et al. 2019, as seed 002 §4.1 runs it): train on the latest key
    frame until its training mIoU reaches ``threshold`` (at most ``max_updates`` steps); the key
    frame stride doubles when the threshold was met, halves when not, within 8-64 frames at 30 fps
    (one update every 266 ms at most). Seed 002 applies its gradient-guided 5 % to this scheme
    too; Adam (AMS's optimizer) stands in for JITNet's momentum SGD."""

    threshold: float = Field(0.75, gt=0.0, le=1.0)  # JITNet's default as seed 002 quotes it
    max_updates: int = Field(8, ge=1)
    min_stride_s: float = Field(8 / 30, gt=0.0)
    max_stride_s: float = Field(64 / 30, gt=0.0)
    gamma: float = Field(0.05, gt=0.0, le=1.0)
    lr: float = Field(1e-4, gt=0.0)  # AMS's (TrainingConfig explains why not 1e-3)
    jpeg_quality: int = Field(95, ge=1, le=100)


class OracleSettings(_Settings):
    """The headroom (``schemes.oracle``): per video, every parameter trained offline (Adam)
    on all of its scored frames, scored on the same frames."""

    steps: int = Field(400, ge=1)
    lr: float = Field(1e-4, gt=0.0)


_VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_OUTSIDE_BRACKETS = re.compile(r",(?![^\[]*\])")  # commas that separate, not list items


@dataclass(frozen=True)
class Variant:
    """AMS with some settings changed, run beside AMS on the same stream (``--variant``)."""

    name: str
    overrides: dict[str, object]  # dotted keys under the AMS settings, as given
    settings: AmsSettings

    @classmethod
    def parse(cls, text: str, base: AmsSettings) -> Variant:
        """``NAME:KEY=VALUE[,KEY=VALUE...]``, keys dotted under the AMS settings (e.g.
        ``lr3e-4:training.lr=3e-4`` or ``nogate:gate.enabled=false``); values are JSON
        (numbers, true/false, [lists]) or else strings. A bad one is a ConfigFileError."""
        name, _, body = text.partition(":")
        flag = f"--variant {text}"
        if not _VARIANT_NAME.fullmatch(name) or not body:
            raise ConfigFileError(
                f"{flag}: write NAME:KEY=VALUE[,KEY=VALUE...], NAME in lower-case letters,"
                " digits and _.- (e.g. lr3e-4:training.lr=3e-4)"
            )
        overrides: dict[str, object] = {}
        for item in _OUTSIDE_BRACKETS.split(body):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigFileError(f"{flag}: {item!r} is not KEY=VALUE")
            overrides[key.strip()] = _value(value.strip())
        merged = base.model_dump()
        for key, value in overrides.items():
            *tables, last = key.split(".")
            table = merged
            for part in tables:
                inner = table.get(part)
                if not isinstance(inner, dict):
                    raise ConfigFileError(f"{flag}: {key}: no such setting")
                table = inner
            if last not in table:
                raise ConfigFileError(f"{flag}: {key}: no such setting")
            table[last] = value
        try:
            return cls(name, overrides, AmsSettings.model_validate(merged))
        except ValidationError as exc:
            raise ConfigFileError(validation_message(flag, exc)) from exc


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


class EvalConfig(_Settings):
    preset: str
    student_model: Path
    teacher_model: Path
    stream: StreamSettings = StreamSettings()
    link: LinkSettings = LinkSettings()
    ams: AmsSettings = AmsSettings()
    one_time: OneTimeSettings = OneTimeSettings()
    tracking: TrackingSettings = TrackingSettings()
    jit: JitSettings = JitSettings()
    oracle: OracleSettings = OracleSettings()
    threads: Annotated[int, Field(ge=1, le=256)] = 2  # LiteRT threads (teacher and device)
    seed: int = 0


def preset(name: str, student_model: Path, teacher_model: Path) -> EvalConfig:
    """``paper``: seed 002 §4.1 on a CPU (random 321x321 crops, batch 4: TrainingConfig's
    documented CPU setting); every other frame scored (5 fps of a 10 fps video), which halves
    the device's inference for each scheme (the student runs only at the scored frames) and
    leaves the means unchanged within noise.

    ``quick``: the same algorithms on the first 30 s of each video, every fifth frame scored,
    16 steps per phase every 5 s, One-Time on the first 10 s, Just-In-Time with 2 steps per
    key frame every 2-8 s: all five schemes in a few minutes on two cores (CI)."""
    if name == "paper":
        return EvalConfig(
            preset=name,
            student_model=student_model,
            teacher_model=teacher_model,
            stream=StreamSettings(eval_stride=2),
        )
    if name != "quick":
        raise ValueError(f"unknown preset {name!r}: one of {', '.join(PRESETS)}")
    return EvalConfig(
        preset=name,
        student_model=student_model,
        teacher_model=teacher_model,
        stream=StreamSettings(clip_s=30.0, eval_stride=5),
        # Short clips: 5 s intervals so that several updates land within the clip; fewer steps
        # per phase (a smaller training resolution costs more accuracy than it saves time).
        ams=AmsSettings(
            training=TrainingConfig(iterations=16),
            asr=AsrConfig(interval_s=5.0),
            atr=AtrConfig(tau_min_s=5.0),
        ),
        one_time=OneTimeSettings(window_s=10.0, iterations=16),
        jit=JitSettings(max_updates=2, min_stride_s=2.0, max_stride_s=8.0),
        oracle=OracleSettings(steps=24),
    )
