"""What a session tells the dashboard, as plain values (no web code: the session imports this).

The session appends these as it works; the daemon hands them to ``FleetState``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Probe:
    """The device's model against the teacher on one uploaded segment's frames, beside the
    pretrained model on the same frames (mIoU over the stream's classes)."""

    at: float  # time.time() when it was measured
    version: int  # of the model the device runs, as the trainer numbers it
    miou: float
    pretrained: float
    frames: int


@dataclass(frozen=True)
class FrameView:
    """The newest probed frame and both label maps, for the device page's overlay."""

    at: float
    version: int
    rgb: np.ndarray  # (H, W, 3) uint8
    device_labels: np.ndarray  # (H, W) uint8
    teacher_labels: np.ndarray  # (H, W) uint8


@dataclass(frozen=True)
class UpdateRecord:
    """A version the trainer made, or a phase whose model the gate kept back."""

    at: float
    version: int | None  # None: gated, no version made
    format: str
    bytes: int
    cause: str  # "phase", "expert e3", "base", "rollback", "selection refit"
    loss: tuple[float, float] | None = None  # the phase's first and last loss
    sent: bool = True


@dataclass(frozen=True)
class AckRecord:
    """The device's answer to a model, update or rollback the session sent."""

    at: float
    answered: int  # the version (the trainer's number) of what it answers
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class UplinkRecord:
    """How the device encoded its latest segment (OneAdapt's knobs act on this)."""

    at: float
    width: int
    height: int
    bitrate_kbps: float
    frames: int


Record = Probe | FrameView | UpdateRecord | AckRecord | UplinkRecord
