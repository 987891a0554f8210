"""Message types of the wire protocol (SPEC §4).

Each message is a strict pydantic model whose fields travel in the envelope's JSON header; the
large payloads (H.264 segments, model files, update bodies) travel as the envelope's binary body.
Models are frozen, reject unknown fields, NaN/inf and type coercion, so a message that decodes
is a message that is valid.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared_schema.compat import StrEnum

SCHEMA_VERSION = 1

MAX_FRAMES_PER_SEGMENT = 4096
MAX_COUNTERS = 128
MAX_CLASSES = 256
MAX_MQTT_PAYLOAD = 268_435_455  # the MQTT remaining-length limit


class MessageType(StrEnum):
    HELLO = "hello"
    SEGMENT = "segment"
    TELEMETRY = "telemetry"
    RESULTS = "results"
    ACK = "ack"
    MODEL = "model"
    UPDATE = "update"
    CONTROL = "control"
    METRICS = "metrics"
    GRADIENT = "gradient"
    CHUNK = "chunk"


class UpdateFormat(StrEnum):
    QDELTA = "qdelta"  # changed quantized weight values, zstd (the default)
    AMS_FP16 = "ams-fp16"  # float16 selected parameters + gzip'd bit-mask (seed 002 §3.1.2)
    ZPATCH = "zpatch"  # zstd with the previous model as raw-content dictionary (opaque files)


class ModelFormat(StrEnum):
    TFLITE = "tflite"
    EDGETPU_TFLITE = "edgetpu-tflite"
    ONNX = "onnx"


class AckReason(StrEnum):
    BASE_MISMATCH = "base_mismatch"  # update's base is not the device's version
    MISSING_UPDATE = "missing_update"  # a gap in the version sequence
    BAD_HASH = "bad_hash"  # the patched model does not hash to result_sha256
    BAD_SIGNATURE = "bad_signature"
    BAD_PAYLOAD = "bad_payload"  # body could not be parsed
    UNSUPPORTED_FORMAT = "unsupported_format"
    INVALID_MODEL = "invalid_model"  # fails to load or its warm-up output is invalid
    UNKNOWN_VERSION = "unknown_version"  # a rollback to a version the device no longer holds
    STALE_VERSION = "stale_version"  # a model or update no newer than what the device runs
    EXPIRED = "expired"  # signed, but past the expiry it was signed with (or the clock is ahead)
    OUT_OF_BOUNDS = "out_of_bounds"  # a control's knob outside the device profile's bounds
    DECODE_ERROR = "decode_error"  # a segment the trainer could not decode
    INTERNAL_ERROR = "internal_error"


Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$")]
Text = Annotated[str, StringConstraints(max_length=1024)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Ed25519SigHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")]
KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]  # see signing.key_id
Version = Annotated[int, Field(ge=0, le=2**53)]
Count = Annotated[int, Field(ge=0, le=2**63)]
NonNeg = Annotated[float, Field(ge=0.0)]
Pixels = Annotated[int, Field(ge=1, le=16384)]
Fps = Annotated[float, Field(gt=0.0, le=240.0)]
UnixTime = Annotated[float, Field(ge=0.0, le=2.0**40)]


class Message(BaseModel):
    """Base of every message: strict, frozen, no extra fields, finite floats only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Hello(Message):
    """Device → trainer on every connect: who it is and which model it runs."""

    type: Literal["hello"] = "hello"
    profile: Name
    device_class: Name
    runtime_version: Annotated[str, StringConstraints(max_length=64)]
    backend: Name
    backends: tuple[Name, ...] = Field(default=(), max_length=16)
    input_size: tuple[Pixels, Pixels]  # (height, width) of the model input
    model_version: Version | None = None
    model_sha256: Sha256Hex | None = None
    update_formats: tuple[UpdateFormat, ...] = (UpdateFormat.QDELTA,)
    max_message_bytes: Annotated[int, Field(ge=4096, le=MAX_MQTT_PAYLOAD)] = MAX_MQTT_PAYLOAD


class Segment(Message):
    """Device → trainer: one H.264 segment (the body) of the frames sampled in one T_update."""

    type: Literal["segment"] = "segment"
    codec: Literal["h264"] = "h264"
    width: Pixels
    height: Pixels
    timestamps: tuple[NonNeg, ...] = Field(min_length=1, max_length=MAX_FRAMES_PER_SEGMENT)
    sampling_rate_fps: Fps
    bitrate_kbps: Annotated[float, Field(gt=0.0, le=1_000_000.0)]
    model_version: Version | None = None
    # the device saw its first frame start a new scene; left out when false, so a trainer from
    # before scene cuts (whose messages forbid unknown fields) still reads every other segment
    scene_cut: bool = Field(False, exclude_if=lambda cut: not cut)

    @model_validator(mode="after")
    def _timestamps_in_order(self) -> Segment:
        ts = self.timestamps
        if any(b < a for a, b in pairwise(ts)):
            raise ValueError("timestamps must be non-decreasing")
        return self


class OpaTelemetry(Message):
    """What OPA (seed 004) chose on the device over a telemetry interval's window of frames."""

    budget_ms: NonNeg
    selector: Literal["shipped", "none", "refused"]  # refused: latency alone chooses
    frames: Count
    over_budget: Count  # frames whose latency passed the budget
    subnets: dict[Name, Count] = Field(default_factory=dict, max_length=MAX_COUNTERS)
    predicted_p50_ms: NonNeg
    actual_p50_ms: NonNeg
    selection_p50_ms: NonNeg  # head, estimator, predictors, search


class Telemetry(Message):
    """Device → trainer every N seconds."""

    type: Literal["telemetry"] = "telemetry"
    uptime_s: NonNeg
    fps: NonNeg
    latency_p50_ms: NonNeg
    latency_p95_ms: NonNeg
    frames: Count
    frames_sampled: Count
    swaps: Count
    bytes_up: Count
    bytes_down: Count
    spool_depth: Count
    model_version: Version | None = None
    counters: dict[Name, Count] = Field(default_factory=dict, max_length=MAX_COUNTERS)
    opa: OpaTelemetry | None = None  # where the profile's [opa] is on


class Results(Message):
    """Device → subscribers: a compact summary of recent label maps (class pixel fractions)."""

    type: Literal["results"] = "results"
    frame_ts: NonNeg
    frames: Count
    model_version: Version | None = None
    class_fractions: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] = Field(
        max_length=MAX_CLASSES
    )


class Ack(Message):
    """Either direction: the fate of one model, update, control or segment message."""

    type: Literal["ack"] = "ack"
    ref_type: Literal["model", "update", "control", "segment"]
    ref_seq: Count
    ok: bool
    reason: AckReason | None = None
    detail: Text = ""
    model_version: Version | None = None  # the sender's active model after handling it
    model_sha256: Sha256Hex | None = None
    resync_from: Version | None = None  # set when the device asks for a resync from this version

    @model_validator(mode="after")
    def _reason_iff_rejected(self) -> Ack:
        if self.ok == (self.reason is not None):
            raise ValueError("a rejection needs a reason and an acceptance must not have one")
        return self


class Model(Message):
    """Trainer → device: a full model file (the body); its hash is the body's sha256."""

    type: Literal["model"] = "model"
    version: Version
    format: ModelFormat = ModelFormat.TFLITE
    name: Annotated[str, StringConstraints(max_length=128)] = ""
    key_id: KeyId | None = None  # the trainer key that signed it
    expires_at: UnixTime | None = None  # signed: refused after this (seconds since the epoch)
    signature: Ed25519SigHex | None = None


class Update(Message):
    """Trainer → device: a delta (the body) from base_version to new_version."""

    type: Literal["update"] = "update"
    base_version: Version
    base_sha256: Sha256Hex  # the file it applies to: a device checks its base by content
    new_version: Version
    result_sha256: Sha256Hex  # sha256 of the full model file the update produces
    format: UpdateFormat = UpdateFormat.QDELTA
    key_id: KeyId | None = None
    expires_at: UnixTime | None = None  # signed: refused after this (seconds since the epoch)
    signature: Ed25519SigHex | None = None

    @model_validator(mode="after")
    def _moves_forward(self) -> Update:
        if self.new_version <= self.base_version:
            raise ValueError("new_version must be greater than base_version")
        return self


MAX_ROI_REGIONS = 32  # per side of the region-quality grid


class RegionQuality(Message):
    """Per-region quality (OneAdapt's macroblock-QP knob, seed 000 §2): the upload split into
    ``cols`` × ``rows`` equal regions, row by row, each with x264's ROI quantiser offset (-1:
    finest, 0: as the rate control decides, +1: coarsest)."""

    cols: Annotated[int, Field(ge=1, le=MAX_ROI_REGIONS)]
    rows: Annotated[int, Field(ge=1, le=MAX_ROI_REGIONS)]
    qoffsets: tuple[Annotated[float, Field(ge=-1.0, le=1.0)], ...] = Field(
        max_length=MAX_ROI_REGIONS**2
    )

    @model_validator(mode="after")
    def _one_per_region(self) -> RegionQuality:
        if len(self.qoffsets) != self.cols * self.rows:
            raise ValueError("qoffsets must hold cols × rows values, row by row")
        return self


class EncoderKnobs(Message):
    bitrate_kbps: Annotated[float, Field(ge=10.0, le=1_000_000.0)] = 200.0
    width: Pixels | None = None  # upload resolution; None keeps the source's
    height: Pixels | None = None
    qp: Annotated[int, Field(ge=0, le=51)] | None = None  # constant QP instead of a bitrate
    # constant quality instead of a bitrate (x264's CRF): unlike a constant QP it honours the
    # per-region offsets, and unlike a bitrate their sum moves the size (OneAdapt's knobs)
    crf: Annotated[float, Field(ge=0.0, le=51.0)] | None = None
    roi: RegionQuality | None = None  # None: one quality over the whole picture

    @model_validator(mode="after")
    def _one_rate_control(self) -> EncoderKnobs:
        if self.qp is not None and self.crf is not None:
            raise ValueError("qp and crf are two rate controls: set one")
        return self


class Control(Message):
    """Trainer → device, retained: the rates and knobs the device must run at now."""

    type: Literal["control"] = "control"
    sampling_rate_fps: Fps
    t_update_s: Annotated[float, Field(gt=0.0, le=86_400.0)]
    encoder: EncoderKnobs | None = None  # None: the device keeps the knobs it runs
    rollback_to: Version | None = None
    key_id: KeyId | None = None  # signed as models and updates are: a rollback is one too
    expires_at: UnixTime | None = None  # signed: refused after this (seconds since the epoch)
    signature: Ed25519SigHex | None = None


class Gradient(Message):
    """Trainer → device: the teacher's DNNGrad (OneAdapt, seed 000 §3.3) on the device's frame
    taken at ``timestamp``, in the body: one byte per 16x16 macroblock of a ``width`` x
    ``height`` picture, row by row (``shared_schema.gradient``), 255 standing for ``scale``.
    Signed as controls are: it steers the device's knobs."""

    type: Literal["gradient"] = "gradient"
    width: Pixels
    height: Pixels
    scale: NonNeg  # |∂z/∂pixel| that the byte 255 stands for
    utility: NonNeg  # z on that frame: a change of z over z is a change of accuracy
    timestamp: Annotated[float, Field(ge=0.0)]  # of the frame, on the device's clock
    key_id: KeyId | None = None
    expires_at: UnixTime | None = None
    signature: Ed25519SigHex | None = None


class ZooMetrics(Message):
    """The trainer's expert zoo (RECL, seed 003 §6.3), shared by every session: a part of
    ``Metrics``, not a message of its own."""

    zoo_experts: Count
    zoo_refused: Count  # expert files refused at load (damaged, foreign)
    zoo_states_refused: Count = 0  # experts' training states refused (used without them)
    selections: Count
    switches: Count  # selections that moved a device to another model
    reused: Count  # of them, to an expert of the zoo
    gate_hits: Count  # the gating network's first pick was the safety check's best expert
    gated_checks: Count
    admitted: Count
    pruned: Count
    refined: Count = 0  # experts whose place a model trained on from them took
    reuse_rate: Annotated[float, Field(ge=0.0, le=1.0)]
    gate_hit_rate: Annotated[float, Field(ge=0.0, le=1.0)]


class Metrics(Message):
    """Trainer → observers, retained: one session's figures (SPEC §6, issue 5 item 8), with
    the trainer's zoo where RECL is on."""

    type: Literal["metrics"] = "metrics"
    mirror_version: Version
    device_version: Version | None = None
    sampling_rate_fps: Fps
    t_update_s: Annotated[float, Field(gt=0.0)]
    training_seconds_last: NonNeg | None = None
    training_seconds_mean: NonNeg | None = None
    buffer_samples: Count
    classes: tuple[Annotated[int, Field(ge=0, lt=MAX_CLASSES)], ...] = Field(max_length=MAX_CLASSES)
    segments: Count
    segments_rejected: Count
    segments_dropped: Count
    frames: Count
    bytes_up: Count
    bytes_down: Count
    phases: Count
    updates_sent: Count
    updates_acked: Count
    updates_rejected: Count
    resyncs: Count
    full_models: Count
    rebases: Count = 0
    reuses: Count = 0  # training went on from an expert of the zoo
    switch_bytes: Count = 0  # the updates that took the device to a chosen model
    gradient_bytes: Count = 0  # OneAdapt's DNNGrad bodies sent to the device
    selector_refits: Count = 0  # an elastic student's OPA selection refitted and sent
    training_seconds_total: NonNeg = 0.0
    zoo: ZooMetrics | None = None


class Chunk(Message):
    """One slice of an encoded envelope too large for the broker (see chunking.py)."""

    type: Literal["chunk"] = "chunk"
    inner_type: MessageType
    msg_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{1,40}$")]
    index: Annotated[int, Field(ge=0)]
    count: Annotated[int, Field(ge=2, le=65536)]
    total_len: Annotated[int, Field(ge=1, le=MAX_MQTT_PAYLOAD * 64)]
    total_sha256: Sha256Hex

    @model_validator(mode="after")
    def _consistent(self) -> Chunk:
        if self.index >= self.count:
            raise ValueError("index must be below count")
        if self.inner_type == MessageType.CHUNK:
            raise ValueError("chunks do not nest")
        return self


AnyMessage = Annotated[
    Hello
    | Segment
    | Telemetry
    | Results
    | Ack
    | Model
    | Update
    | Control
    | Metrics
    | Gradient
    | Chunk,
    Field(discriminator="type"),
]
