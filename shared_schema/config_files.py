"""TOML files a person writes (device profiles, the trainer config): reading them, and the
path rules both follow.

Every string may use ``${VAR}`` (an environment variable; ``${VAR:-default}`` where it may be
unset; ``$${VAR}`` for the text itself): secrets, hosts and ports as well as paths.
``AMS_SHARED_DIR`` defaults to the shared data directory beside the project, ``AMS_KEY_DIR`` to
``~/.config/amstream/keys``. Paths may also use ``~``, and relative paths resolve against the
file's directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared_schema.compat import tomllib

SHARED_DIR_ENV = "AMS_SHARED_DIR"
# Where the trainer's keys are (cloud-trainer keys generate --dir): the bundled profile and the
# default trainer config name them under ${AMS_KEY_DIR}.
KEY_DIR_ENV = "AMS_KEY_DIR"
DEFAULT_KEY_DIR = "~/.config/amstream/keys"
PROJECT_DIR = Path(__file__).resolve().parents[1]
_VAR_RE = re.compile(r"(\$?)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NOT_FILES = ("/dev/", "picamera2:")


class ConfigFileError(ValueError):
    """A file a person wrote that cannot be used; the message names the file and the field."""


def find_shared_dir() -> Path | None:
    """The shared data directory: ``$AMS_SHARED_DIR``, else ``../shared`` beside the project."""
    if os.environ.get(SHARED_DIR_ENV):
        return Path(os.environ[SHARED_DIR_ENV]).expanduser().resolve()
    for root in (PROJECT_DIR, Path.cwd()):
        candidate = root.parent / "shared"
        if (candidate / "SPEC.md").is_file():
            return candidate.resolve()
    return None


def read_toml(path: Path, error: type[ValueError]) -> dict[str, Any]:
    """A TOML file's tables; an unreadable or malformed file raises ``error`` naming it."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from exc


def expand_config(
    node: Any, base_dir: Path, path_keys: frozenset[str] | set[str], where: tuple[str, ...] = ()
) -> Any:
    """``node`` with ``${VAR}`` substituted in every string, and every string under a key in
    ``path_keys`` expanded as a path (see expand_path)."""
    if isinstance(node, dict):
        return {k: expand_config(v, base_dir, path_keys, (*where, k)) for k, v in node.items()}
    field = ".".join(where)
    if isinstance(node, list):
        return [expand_config(v, base_dir, path_keys, (*where, str(i))) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    if where and where[-1] in path_keys:
        return str(expand_path(node, base_dir, field))
    value = substitute_vars(node, field)
    if where == ("source", "uri"):
        # A file resolves like a path; streams and devices are not files.
        is_file = "://" not in value and not value.startswith(_NOT_FILES)
        return str(expand_path(value, base_dir, field)) if is_file else value
    return value


def expand_path(value: str, base_dir: Path, field: str = "path") -> Path:
    path = Path(substitute_vars(value, field)).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def substitute_vars(value: str, field: str) -> str:
    """``${VAR}`` from the environment, ``${VAR:-default}`` where it may be unset;
    ``${AMS_SHARED_DIR}`` defaults to the shared data."""

    def var(match: re.Match[str]) -> str:
        escaped, name, default = match.groups()
        if escaped:  # $${NAME}: the text ${NAME} itself
            return match.group(0)[1:]
        if default is not None and not os.environ.get(name):
            return default
        if name == KEY_DIR_ENV and not os.environ.get(name):
            return str(Path(DEFAULT_KEY_DIR).expanduser())
        if name == SHARED_DIR_ENV and not os.environ.get(name):
            shared = find_shared_dir()
            if shared is None:
                raise ValueError(
                    f"{field}: ${{{name}}} is unset and no shared data directory was found"
                )
            return str(shared)
        if name not in os.environ:
            raise ValueError(
                f"{field}: environment variable ${{{name}}} is not set: set it, or write"
                f" ${{{name}:-default}}"
            )
        return os.environ[name]

    return _VAR_RE.sub(var, value)


def validation_message(path: Path | str, exc: ValidationError, within: tuple[str, ...] = ()) -> str:
    """A file's (or a flag's) first validation error as one line, ``path: field: why``: our
    own checks' messages as they are, without pydantic's "Value error, " prefix (``within``:
    the table that was validated)."""
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in (*within, *err["loc"]))
    why = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
    return f"{path}: {field}: {why}"


def write_private(path: Path, data: bytes) -> None:
    """A secret (a key, a password): readable by its owner only from the moment it exists,
    and replaced atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
