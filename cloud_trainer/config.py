"""``trainer.toml``: everything the trainer daemon needs, typed.

Paths may use ``${VAR}`` (``${AMS_SHARED_DIR}`` defaults to the shared data directory) and
``~``; relative paths resolve against the config file's directory. The bundled default
(``default_trainer.toml``) trains the Coral-zoo student with the Coral-zoo teacher.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud_trainer.ams.asr import AsrConfig
from cloud_trainer.ams.atr import AtrConfig
from cloud_trainer.ams.training import TrainingConfig
from cloud_trainer.teacher import TeacherConfig
from shared_schema.config_files import ConfigFileError, expand_paths, read_toml
from shared_schema.messages import UpdateFormat
from shared_schema.mqtt import BrokerConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent / "default_trainer.toml"
_PATH_KEYS = frozenset({"model", "directory", "signing_key"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudentConfig(_Section):
    model: Path  # the quantized .tflite every new device starts from
    num_classes: int = Field(21, ge=2, le=256)


class UpdatesConfig(_Section):
    format: UpdateFormat = UpdateFormat.QDELTA
    history: int = Field(8, ge=2, le=1000)  # versions kept to answer resyncs with a delta
    signing_key: Path | None = None  # Ed25519 private key (PEM): updates are signed with it


class CheckpointConfig(_Section):
    directory: Path
    interval_s: float = Field(60.0, gt=0.0)


class MetricsConfig(_Section):
    interval_s: float = Field(10.0, gt=0.0)  # log line and retained MQTT metrics per session
    prometheus_port: int | None = Field(None, ge=1, le=65535)


class TrainerConfig(_Section):
    trainer_id: str = "trainer"
    mqtt: BrokerConfig = BrokerConfig()
    student: StudentConfig
    teacher: TeacherConfig
    training: TrainingConfig = TrainingConfig()
    asr: AsrConfig = AsrConfig()
    atr: AtrConfig = AtrConfig()
    updates: UpdatesConfig = UpdatesConfig()
    checkpoint: CheckpointConfig
    metrics: MetricsConfig = MetricsConfig()
    max_sessions: int = Field(64, ge=1)
    max_pending_segments: int = Field(8, ge=1)  # per session, before the oldest is dropped


class ConfigError(ConfigFileError):
    """A config that cannot be used; the message names the file and the field."""


def load_config(path: Path | None = None) -> TrainerConfig:
    path = Path(path or DEFAULT_CONFIG)
    raw = read_toml(path, ConfigError)
    try:
        return TrainerConfig.model_validate(expand_paths(raw, path.resolve().parent, _PATH_KEYS))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {field}: {err['msg']}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
