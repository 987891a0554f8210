"""The device profile: everything a device class needs to run the edge runtime, in one TOML file.

Paths follow ``shared_schema.config_files``: ``${VAR}``, ``~``, relative to the profile's
directory. A name without a suffix is one of the bundled profiles in ``firmware_configs``.
Files are not required to exist when a profile is validated: a profile describes a device, and
the runtime checks the files it opens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from edge_runtime.backends import Backend, InferenceConfig
from edge_runtime.scene_cut import SceneCutSection
from firmware_configs import PROFILE_DIR
from shared_schema.config_files import ConfigFileError, expand_config, read_toml
from shared_schema.messages import MAX_ROI_REGIONS, EncoderKnobs, ModelFormat
from shared_schema.mqtt import PATH_KEYS as MQTT_PATH_KEYS
from shared_schema.mqtt import BrokerConfig
from shared_schema.topics import validate_device_id


class ProfileError(ConfigFileError):
    """A profile that cannot be used; the message names the file and the offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSection(_Section):
    id: str
    device_class: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

    @model_validator(mode="after")
    def _valid_id(self) -> DeviceSection:
        validate_device_id(self.id)
        return self


class ModelSection(_Section):
    initial: Path  # the model the device starts from before any update
    format: ModelFormat = ModelFormat.TFLITE
    labels: Path | None = None
    slot_dir: Path  # slots A and B and the active-slot record live here
    public_key: Path | None = None  # the trainer's Ed25519 key signatures must verify against
    # The trainer's next key (cloud-trainer keys generate writes both): trusted as well, so
    # that a rotation (cloud-trainer keys rotate) never strands a device.
    next_public_key: Path | None = None
    # Development only: accept unsigned models, updates and controls. The runtime says so loudly.
    allow_unsigned: bool = False

    @property
    def trusted_keys(self) -> tuple[Path, ...]:
        return tuple(k for k in (self.public_key, self.next_public_key) if k is not None)

    @model_validator(mode="after")
    def _signed_unless_told_otherwise(self) -> ModelSection:
        if self.next_public_key is not None and self.public_key is None:
            raise ValueError("next_public_key needs public_key")
        if self.public_key is None and not self.allow_unsigned:
            raise ValueError(
                "public_key is required: set it to the trainer's public key (cloud-trainer keys"
                " generate), or allow_unsigned = true for development only"
            )
        return self


class SamplingSection(_Section):
    min_fps: float = Field(0.1, gt=0.0, le=240.0)
    max_fps: float = Field(1.0, gt=0.0, le=240.0)
    initial_fps: float = Field(1.0, gt=0.0, le=240.0)

    @model_validator(mode="after")
    def _ordered(self) -> SamplingSection:
        if not self.min_fps <= self.initial_fps <= self.max_fps:
            raise ValueError("need min_fps <= initial_fps <= max_fps")
        return self


class BufferSection(_Section):
    t_update_s: float = Field(10.0, gt=0.0, le=3600.0)
    bitrate_kbps: float = Field(200.0, ge=10.0, le=100_000.0)
    upload_width: int | None = Field(None, ge=16, le=8192)
    upload_height: int | None = Field(None, ge=16, le=8192)
    max_frames: int = Field(600, ge=1, le=4096)  # per segment: bounds encoder memory
    max_segment_bytes: int = Field(8 * 2**20, ge=2**16)
    spool_dir: Path
    spool_max_bytes: int = Field(256 * 2**20, ge=2**20)
    spool_max_segments: int = Field(1000, ge=1)

    @property
    def initial_knobs(self) -> EncoderKnobs:
        """The encoder knobs the device starts with, until a control sets others."""
        return EncoderKnobs(bitrate_kbps=self.bitrate_kbps, width=self.upload_width,
                            height=self.upload_height)  # fmt: skip


class KnobsSection(_Section):
    """The bounds of the encoder knobs the trainer may set (OneAdapt, seed 000): a control
    outside them is refused, and the device keeps its last good knobs."""

    min_bitrate_kbps: float = Field(20.0, ge=10.0, le=100_000.0)
    max_bitrate_kbps: float = Field(4000.0, ge=10.0, le=100_000.0)
    min_qp: int = Field(10, ge=0, le=51)
    max_qp: int = Field(51, ge=0, le=51)
    # constant quality (OneAdapt's quality knob): below 18 x264 spends bits the teacher cannot
    # use, above 45 the picture falls apart; OneAdapt's λ was calibrated on this range
    min_crf: float = Field(18.0, ge=0.0, le=51.0)
    max_crf: float = Field(45.0, ge=0.0, le=51.0)
    min_upload_side: int = Field(64, ge=16, le=8192)  # pixels, for the width and the height
    max_upload_side: int = Field(4096, ge=16, le=8192)
    max_roi_qoffset: float = Field(1.0, ge=0.0, le=1.0)  # 0: no per-region quality
    max_roi_regions: int = Field(MAX_ROI_REGIONS, ge=1, le=MAX_ROI_REGIONS)  # per side

    @model_validator(mode="after")
    def _ordered(self) -> KnobsSection:
        for name in ("bitrate_kbps", "qp", "crf", "upload_side"):
            if getattr(self, f"min_{name}") > getattr(self, f"max_{name}"):
                raise ValueError(f"need min_{name} <= max_{name}")
        return self

    def refusal(self, knobs: EncoderKnobs) -> str | None:
        """Why ``knobs`` are outside these bounds (the field, its value, the bound), or None."""
        sides = (self.min_upload_side, self.max_upload_side)
        checks = [
            ("bitrate_kbps", knobs.bitrate_kbps, (self.min_bitrate_kbps, self.max_bitrate_kbps)),
            ("qp", knobs.qp, (self.min_qp, self.max_qp)),
            ("crf", knobs.crf, (self.min_crf, self.max_crf)),
            ("width", knobs.width, sides),
            ("height", knobs.height, sides),
        ]
        if knobs.roi is not None:
            regions, strongest = (1, self.max_roi_regions), max(map(abs, knobs.roi.qoffsets))
            checks += [("roi.cols", knobs.roi.cols, regions), ("roi.rows", knobs.roi.rows, regions),
                       ("roi.qoffsets", strongest, (0.0, self.max_roi_qoffset))]  # fmt: skip
        for name, value, (low, high) in checks:
            if value is not None and not low <= value <= high:
                return f"encoder.{name} {value} outside the profile's [knobs] [{low}, {high}]"
        return None


class OneAdaptSection(_Section):
    """OneAdapt (seed 000) on the device: each DNNGrad from the trainer moves the encoder knobs
    one eq. 2 step within ``[knobs]``; off by default (the trainer's control sets them)."""

    enabled: bool = False
    alpha: float = Field(0.01, gt=0.0, le=10.0)  # eq. 2's learning rate
    # λ: the accuracy gradient (per unit of a normalised knob) one kbps gradient is worth; 0.16
    # is where `cloud-trainer evaluate --uplink` measured 45 % less uplink at -0.7 points
    lam: float = Field(0.16, ge=0.0)
    # Quality (CRF) always adapts; the resolution and the per-region quality only where asked:
    # measured on the shared videos, their OutputGrad estimates are poor and cost accuracy.
    resolution: bool = False
    roi_cols: int = Field(0, ge=0, le=MAX_ROI_REGIONS)  # the per-region quality grid; 0: none
    roi_rows: int = Field(0, ge=0, le=MAX_ROI_REGIONS)
    frames: int = Field(32, ge=1, le=1024)  # sampled frames kept for the gradient to find


class OpaSection(_Section):
    """OPA (seed 004) on the device: the model is an elastic student and each frame runs the
    sub-network OPA picks for ``budget_ms``; off by default (the model runs whole)."""

    enabled: bool = False
    budget_ms: float = Field(50.0, gt=0.0, le=10_000.0)  # per frame, inference alone


class SourceSection(_Section):
    # A video file, an rtsp:// / http(s):// / rtmp:// stream, /dev/videoN (V4L2) or picamera2:
    uri: str | None = None
    realtime: bool = True  # files: at their own frame rate; False: as fast as possible
    loop: bool = False  # files: start again at the end
    width: int | None = Field(None, ge=16, le=8192)  # what to ask a camera for
    height: int | None = Field(None, ge=16, le=8192)
    fps: float | None = Field(None, gt=0.0, le=240.0)


class TelemetrySection(_Section):
    interval_s: float = Field(10.0, gt=0.0, le=3600.0)
    results_rate_hz: float = Field(0.0, ge=0.0, le=30.0)  # 0: no MQTT results summary
    # The device's own Prometheus endpoint (its telemetry, as the trainer exports it); 0: off.
    prometheus_port: int = Field(0, ge=0, le=65535)
    prometheus_host: str = "127.0.0.1"


class Profile(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    device: DeviceSection
    inference: InferenceConfig  # the table's `backend` picks the back-end's config class
    model: ModelSection
    mqtt: BrokerConfig
    sampling: SamplingSection = SamplingSection()
    buffer: BufferSection
    knobs: KnobsSection = KnobsSection()
    oneadapt: OneAdaptSection = OneAdaptSection()
    opa: OpaSection = OpaSection()
    scene_cut: SceneCutSection = SceneCutSection()
    source: SourceSection = SourceSection()
    telemetry: TelemetrySection = TelemetrySection()

    @model_validator(mode="after")
    def _model_fits_backend(self) -> Profile:
        onnx = self.model.format == ModelFormat.ONNX
        if onnx != (self.inference.backend == Backend.ONNXRUNTIME):
            raise ValueError("model.format 'onnx' goes with backend 'onnxruntime' only")
        if (self.model.format == ModelFormat.EDGETPU_TFLITE) != (
            self.inference.backend == Backend.EDGETPU
        ):
            raise ValueError("model.format 'edgetpu-tflite' goes with backend 'edgetpu' only")
        if self.opa.enabled and self.inference.backend != Backend.LITERT:
            raise ValueError(f"[opa] runs its sub-networks on backend '{Backend.LITERT}' only")
        initial = self.knobs.refusal(self.buffer.initial_knobs)
        if initial is not None:
            raise ValueError(f"the [buffer] knobs: {initial}")
        return self

    def named_files(self) -> list[tuple[str, Path]]:
        """Every file the profile names, as (field, path): what the device reads at start."""
        tls = self.mqtt.tls
        named = [
            ("model.initial", self.model.initial),
            ("model.labels", self.model.labels),
            ("model.public_key", self.model.public_key),
            ("model.next_public_key", self.model.next_public_key),
            ("mqtt.password_file", self.mqtt.password_file),
            *[(f"mqtt.tls.{k}", getattr(tls, k)) for k in ("ca_file", "cert_file", "key_file")
              if tls is not None],
        ]  # fmt: skip
        return [(field, path) for field, path in named if path is not None]

    def file_problems(self) -> list[str]:
        """``field: path: why, fix`` for each named file this process cannot read."""
        return [
            f"{field}: {path}: {why}"
            for field, path in self.named_files()
            if (why := unreadable(path, _FILE_FIXES.get(field, ""))) is not None
        ]


# What to do about a missing file, by the field that names it.
_FILE_FIXES = {
    "model.initial": "copy the model there (edge-runtime bundle ships it) or fix the path",
    "model.labels": "copy the labels file there or remove the key",
    "model.public_key": "copy the trainer's public key there (cloud-trainer keys generate"
    " makes it; cloud-trainer fleet provision puts it in each device's directory)",
    "model.next_public_key": "copy the trainer's next public key there or remove the key",
    "mqtt.password_file": "copy the device's password file there (cloud-trainer fleet"
    " provision makes one per device)",
    "mqtt.tls.ca_file": "copy the fleet's CA certificate there (ca.pem of the fleet directory)",
}


def unreadable(path: Path, fix: str = "") -> str | None:
    """Why ``path`` cannot be read as a file by this process (with ``fix``), or None."""
    if not path.exists():
        why = "no such file"
    elif not path.is_file():
        why = "not a file"
    elif not os.access(path, os.R_OK):
        why = "not readable by this user: check its owner and mode"
    else:
        return None
    return f"{why}: {fix}" if fix else why


def load_profile(path_or_name: str | Path) -> Profile:
    """Load a profile from a file, or by name from the bundled ``firmware_configs``."""
    path = profile_file(path_or_name)
    raw = read_toml(path, ProfileError)
    return parse_profile(raw, base_dir=path.resolve().parent, source=str(path))


def profile_file(path_or_name: str | Path) -> Path:
    """The file of a profile given as a path or as the name of a bundled one."""
    path = Path(path_or_name)
    return PROFILE_DIR / f"{path_or_name}.toml" if not path.suffix and not path.exists() else path


def bundled_profile(
    name: str, workdir: Path, *, device_id: str, **tables: dict[str, object]
) -> Profile:
    """A bundled profile for a device on this machine (tools, benchmarks, tests), its slots and
    spool in ``workdir``; ``tables`` set keys of its tables (``buffer={"t_update_s": 2.0}``)."""
    raw = read_toml(PROFILE_DIR / f"{name}.toml", ProfileError)
    raw["device"]["id"] = device_id
    raw["model"]["slot_dir"] = str(workdir / "slots")
    raw["buffer"]["spool_dir"] = str(workdir / "spool")
    for table, values in tables.items():
        raw.setdefault(table, {}).update(values)
    return parse_profile(raw, base_dir=PROFILE_DIR, source=f"{name}.toml")


def parse_profile(raw: dict[str, Any], *, base_dir: Path, source: str = "profile") -> Profile:
    try:
        expanded = expand_config(raw, base_dir, _PATH_KEYS)
        return Profile.model_validate(expanded)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = _field_name(err)
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ProfileError(f"{source}: {field}: {err['msg']}{more}") from exc
    except ValueError as exc:  # path expansion, device id checks outside pydantic
        raise ProfileError(f"{source}: {exc}") from exc


def _field_name(error: ErrorDetails) -> str:
    """The field in error as a profile's author names it.

    The back-end's tag is not part of the path (``inference.threads``, where pydantic says
    ``inference.litert.threads``), and a bad or missing tag is an error of its own field
    (``inference.backend``, where pydantic says ``inference``).
    """
    loc = [str(part) for part in error["loc"]]
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append(error["ctx"]["discriminator"].strip("'"))
    elif loc[:1] == ["inference"] and loc[1:2] and loc[1] in set(Backend):
        del loc[1]
    return ".".join(loc) or "(top level)"


# Keys whose values are paths, wherever they appear in the profile.
_PATH_KEYS = {
    "initial",
    "labels",
    "slot_dir",
    "public_key",
    "next_public_key",
    "spool_dir",
} | MQTT_PATH_KEYS
