"""``trainer.toml``: everything the trainer daemon needs, typed.

Paths may use ``${VAR}`` (``${AMS_SHARED_DIR}`` defaults to the shared data directory) and
``~``; relative paths resolve against the config file's directory. The bundled default
(``default_trainer.toml``) trains the Coral-zoo student with the Coral-zoo teacher.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cloud_trainer.ams.asr import AsrConfig
from cloud_trainer.ams.atr import AtrConfig
from cloud_trainer.ams.gate import GateConfig
from cloud_trainer.ams.rebase import RebaseConfig
from cloud_trainer.ams.training import TrainingConfig
from cloud_trainer.dashboard.config import DashboardConfig
from cloud_trainer.oneadapt.config import OneAdaptConfig
from cloud_trainer.opa.config import OpaConfig
from cloud_trainer.recl.config import ReclConfig
from cloud_trainer.scaleout.config import RayConfig
from cloud_trainer.student.float16 import Precision
from cloud_trainer.teacher import TeacherConfig
from shared_schema.config_files import (
    ConfigFileError,
    expand_config,
    read_toml,
    validation_message,
)
from shared_schema.messages import UpdateFormat
from shared_schema.mqtt import PATH_KEYS as MQTT_PATH_KEYS
from shared_schema.mqtt import BrokerConfig
from shared_schema.signing import SIGNATURE_LIFETIME_S
from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError

DEFAULT_CONFIG = Path(__file__).resolve().parent / "default_trainer.toml"
PATH_KEYS = (
    frozenset({"model", "labels", "directory", "signing_key", "token_file", "tls_cert", "tls_key"})
    | MQTT_PATH_KEYS
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudentConfig(_Section):
    model: Path  # the quantized .tflite every new device starts from
    # What devices run and the trainer trains: the file at its frozen integer scales ("int8"),
    # or its float16 form (student/float16.py), trained in float; a device flashed with the
    # other file gets the full model first.
    precision: Precision = "int8"
    # How many classes the model scores: read from the file. Older trainer.toml files state it;
    # they still load, where the number agrees with the file.
    num_classes: int | None = Field(None, ge=2, le=256, validate_default=True)
    labels: Path | None = None  # its class names, one per line (the dashboard shows them)

    @field_validator("labels")
    @classmethod
    def _a_readable_labels_file(cls, labels: Path | None) -> Path | None:
        if labels is not None and not labels.is_file():
            raise ValueError(f"no labels file {labels}: name one, or remove the key")
        return labels

    @field_validator("model")
    @classmethod
    def _a_readable_model(cls, model: Path) -> Path:
        read_model(model)  # refused here, by this field's name
        return model

    @field_validator("num_classes")
    @classmethod
    def _classes_of_the_model(cls, stated: int | None, info: ValidationInfo) -> int | None:
        model = info.data.get("model")
        if model is None:
            return stated  # no usable model: pydantic reports that field
        counted = read_model(model).num_classes
        if stated not in (None, counted):
            raise ValueError(
                f"{stated}, but {model.name} scores {counted} classes: remove the line (the"
                f" file says) or set it to {counted}"
            )
        return counted


class UpdatesConfig(_Section):
    format: UpdateFormat = UpdateFormat.QDELTA
    history: int = Field(8, ge=2, le=1000)  # versions kept to answer resyncs with a delta
    # Ed25519 private key (PEM, cloud-trainer keys generate): models, updates and controls are
    # signed with it.
    signing_key: Path | None = None
    allow_unsigned: bool = False  # development only: send them unsigned (the daemon says so)
    # Devices refuse a signed message after this (an update queued for a device offline
    # longer is answered with a fresh one when it reconnects).
    signature_lifetime_s: float = Field(SIGNATURE_LIFETIME_S, ge=60.0)
    # At most one full model per device this often (the largest thing the trainer sends): a
    # device that keeps asking waits, and then gets one for its latest state.
    full_model_interval_s: float = Field(10.0, ge=0.0)
    # A model or update no ack has answered this long (lost with a broker's state, say) is
    # offered again, from the last file the device acknowledged; the wait doubles with each
    # unanswered offer, up to an hour.
    ack_timeout_s: float = Field(30.0, gt=0.0)

    @model_validator(mode="after")
    def _signed_unless_told_otherwise(self) -> UpdatesConfig:
        if self.signing_key is None and not self.allow_unsigned:
            raise ValueError(
                "signing_key is required: cloud-trainer keys generate --dir DIR, then set"
                " [updates] signing_key = DIR/trainer_ed25519.pem (or allow_unsigned = true for"
                " development only)"
            )
        return self


class CheckpointConfig(_Section):
    directory: Path
    interval_s: float = Field(60.0, gt=0.0)


class MetricsConfig(_Section):
    interval_s: float = Field(10.0, gt=0.0)  # log line and retained MQTT metrics per session
    # The Prometheus endpoint (cloud_trainer/prometheus.py); 0: off. On loopback unless told
    # otherwise: it has no authentication.
    prometheus_port: int = Field(9464, ge=0, le=65535)
    prometheus_host: str = "127.0.0.1"


class TrainerConfig(_Section):
    trainer_id: str = "trainer"
    mqtt: BrokerConfig = BrokerConfig()
    student: StudentConfig
    teacher: TeacherConfig
    training: TrainingConfig = Field(TrainingConfig(), validate_default=True)
    asr: AsrConfig = AsrConfig()
    atr: AtrConfig = AtrConfig()
    gate: GateConfig = GateConfig()
    rebase: RebaseConfig = RebaseConfig()
    recl: ReclConfig = ReclConfig()
    oneadapt: OneAdaptConfig = OneAdaptConfig()
    opa: OpaConfig = OpaConfig()
    updates: UpdatesConfig  # no default: a deployment names its signing key
    checkpoint: CheckpointConfig
    metrics: MetricsConfig = MetricsConfig()
    dashboard: DashboardConfig = DashboardConfig()
    ray: RayConfig = RayConfig()  # used by serve --ray only
    max_sessions: int = Field(64, ge=1)  # in memory at once: idle ones leave (state on disk)
    session_idle_s: float = Field(600.0, gt=0.0)  # no message for this long: the session leaves
    max_pending_segments: int = Field(8, ge=1)  # per session, before the oldest is dropped
    max_pending_events: int = Field(32, ge=1)  # hellos and acks per session, likewise

    @field_validator("training")
    @classmethod
    def _for_the_student(cls, training: TrainingConfig, info: ValidationInfo) -> TrainingConfig:
        student = info.data.get("student")
        if student is None:
            return training  # an invalid [student]: pydantic reports that section
        return training.for_student(read_model(student.model).input_size)

    @model_validator(mode="after")
    def _a_tflite_teacher_for_dnngrad(self) -> TrainerConfig:
        if self.oneadapt.enabled and self.teacher.model.suffix != ".tflite":
            raise ValueError(
                "[oneadapt] enabled: DNNGrad back-propagates through the teacher's graph, which"
                " needs a .tflite [teacher] model"
            )
        return self

    @model_validator(mode="after")
    def _scores_for_kl(self) -> TrainerConfig:
        if self.training.distillation == "kl" and self.teacher.kind != "torch":
            raise ValueError(
                '[training] distillation = "kl" needs the teacher\'s scores: set [teacher]'
                ' kind = "torch" (or distillation = "labels")'
            )
        return self

    @model_validator(mode="after")
    def _int8_experts(self) -> TrainerConfig:
        if self.recl.enabled and self.student.precision != "int8":
            raise ValueError(
                "[recl] keeps int8 experts at the student's frozen scales: set [student]"
                ' precision = "int8", or [recl] enabled = false'
            )
        return self

    @property
    def zoo_directory(self) -> Path:
        """Where the expert zoo lives: ``[recl] directory``, or beside the sessions (under a
        name no device id can take: those start with a letter or digit)."""
        return self.recl.directory or self.checkpoint.directory / "_zoo"


def read_model(path: Path) -> TFLiteFile:
    """A model file named by the config, parsed (once while it is unchanged); unreadable or
    malformed ones are a ValueError (a validation error naming the field)."""
    try:
        stat = path.stat()
        return _parsed(path, stat.st_mtime_ns, stat.st_size)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except TFLiteFormatError as exc:
        raise ValueError(f"{path}: {exc}: name a quantized .tflite") from exc


@functools.lru_cache(maxsize=4)
def _parsed(path: Path, mtime_ns: int, size: int) -> TFLiteFile:
    return TFLiteFile(path.read_bytes())


class ConfigError(ConfigFileError):
    """A config that cannot be used; the message names the file and the field."""


def load_config(path: Path | None = None) -> TrainerConfig:
    path = Path(path or DEFAULT_CONFIG)
    raw = read_toml(path, ConfigError)
    try:
        return TrainerConfig.model_validate(expand_config(raw, path.resolve().parent, PATH_KEYS))
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc)) from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
