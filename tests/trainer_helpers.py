"""Small trainer configurations for tests: the real models, tiny training settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

from cloud_trainer.config import DEFAULT_CONFIG, TrainerConfig
from shared_schema.config_files import expand_paths

PATH_KEYS = frozenset({"model", "directory", "signing_key"})


def trainer_raw(tmp_path: Path, broker=None, **training) -> dict:
    raw = tomllib.loads(DEFAULT_CONFIG.read_text())
    raw["training"].update({"resolution": [129, 129], "iterations": 2, "batch_size": 1, **training})
    raw["checkpoint"] = {"directory": str(tmp_path / "ckpt"), "interval_s": 2.0}
    raw["metrics"] = {"interval_s": 1.0}
    raw["asr"]["interval_s"] = 2.0
    if broker is not None:
        raw["mqtt"].update(port=broker.port, reconnect_min_s=0.1, reconnect_max_s=1.0)
    return expand_paths(raw, DEFAULT_CONFIG.parent, PATH_KEYS)


def trainer_config(tmp_path: Path, broker=None, **training) -> TrainerConfig:
    return TrainerConfig.model_validate(trainer_raw(tmp_path, broker, **training))


def write_toml(raw: dict, path: Path) -> Path:
    """A config dict back to TOML (the few value types a trainer config uses)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str | Path):
            return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for section, table in raw.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
