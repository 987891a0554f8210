"""``edge-runtime bundle``: everything one device needs, in one file, installable with no network.

    amstream-device/
      bundle.env            what it was built for (Python version, platform, extras, device id)
      install.sh            builds the venv from wheels/ (pip --no-index), installs the rest
      amstream-edge.service the systemd unit (install.sh fills in the paths)
      wheels/               the project's wheel and every dependency's, for the target platform
      config/               profile.toml and every file it names (model, labels, keys, CA,
                            password), the profile naming them relative to itself

The profile's state (slots, spool) goes to ``@STATE_DIR@``, which install.sh sets
(``/var/lib/amstream``, the unit's StateDirectory). The bundle holds the device's MQTT password
when its profile names one: it is written readable by its owner only.
"""

from __future__ import annotations

import email
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import tomli_w
from packaging.requirements import Requirement

from edge_runtime.backends import Backend
from edge_runtime.profile import Profile, ProfileError, load_profile, profile_file
from shared_schema.config_files import PROJECT_DIR, read_toml

NAME = "amstream-device"
STATE_DIR = "@STATE_DIR@"  # install.sh replaces it
_SECRETS = {"password_file", "key_file"}  # copied readable by their owner only
_OLDEST_MANYLINUX = 17  # manylinux2014: what most wheels of the dependencies are tagged with


class BundleError(ProfileError):
    """A bundle that cannot be made; the message names what and the fix."""


@dataclass(frozen=True)
class Target:
    """What the bundle installs on: a pip platform tag (None: this machine) and a Python."""

    platform: str | None
    python: str  # "3.11"

    def pip_options(self) -> list[str]:
        """pip download's options for wheels of this target only."""
        options = ["--only-binary=:all:", "--python-version", self.python]
        if self.platform is None:
            return options
        tags = [a for tag in platform_tags(self.platform) for a in ("--platform", tag)]
        return [*options, "--implementation", "cp", *tags]


def platform_tags(platform: str) -> list[str]:
    """``platform`` and the older tags it runs (pip does not widen ``--platform``):
    manylinux_2_28_aarch64 also takes manylinux_2_17, manylinux2014 and plain linux_aarch64
    wheels (NVIDIA's onnxruntime_gpu for a Jetson is one)."""
    parts = platform.split("_", 3)
    if parts[0] != "manylinux" or len(parts) < 4 or not parts[2].isdigit():
        return [platform]
    glibc, arch = int(parts[2]), parts[3]
    older = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, _OLDEST_MANYLINUX - 1, -1)]
    legacy = [f"manylinux2014_{arch}"] if glibc >= _OLDEST_MANYLINUX else []
    return [*older, *legacy, f"linux_{arch}"]


def extras_for(backend: Backend) -> list[str]:
    """The project's extras a device with ``backend`` installs."""
    return ["edge", "jetson"] if backend == Backend.ONNXRUNTIME else ["edge"]


def build(
    profile_path: Path,
    out: Path,
    target: Target,
    *,
    wheel: Path | None = None,
    find_links: list[Path] | None = None,
    extras: list[str] | None = None,
    add_wheels: list[Path] | None = None,
) -> dict[str, object]:
    """Write the bundle of the device ``profile_path`` describes to ``out`` (a .tar.gz):
    the project ``wheel`` (default: built here) with ``extras`` (default: what its back-end
    needs) and ``add_wheels`` (e.g. NVIDIA's onnxruntime-gpu), and all their dependencies."""
    profile_path = profile_file(profile_path)
    profile = load_profile(profile_path)
    problems = profile.file_problems()
    if problems:
        raise BundleError(f"{profile_path}: {problems[0]}")
    extras = extras or extras_for(profile.inference.backend)
    added = [_existing(w, "--add-wheel") for w in add_wheels or []]
    with tempfile.TemporaryDirectory(prefix="amstream-bundle-") as tmp:
        root = Path(tmp) / NAME
        config = root / "config"
        config.mkdir(parents=True)
        _write_profile(profile_path, profile, config)
        wheels = _wheels(root / "wheels", target, extras, wheel, find_links or [], added)
        _write_env(root / "bundle.env", {
            "AMS_PYTHON_VERSION": target.python,
            "AMS_EXTRAS": ",".join(extras),
            "AMS_ADDED_WHEELS": " ".join(w.name for w in added),
            "AMS_DEVICE_ID": profile.device.id,
            "AMS_SYSTEM_SITE_PACKAGES": "1" if needs_system_packages(profile) else "0",
        })  # fmt: skip
        for name in ("install.sh", "amstream-edge.service"):
            shutil.copyfile(Path(str(files("edge_runtime") / "deploy" / name)), root / name)
        (root / "install.sh").chmod(0o755)
        _tar(root, out)
    return {
        "bundle": str(out),
        "bytes": out.stat().st_size,
        "device": profile.device.id,
        "python": target.python,
        "platform": target.platform or "this machine",
        "extras": extras,
        "wheels": sorted(w.name for w in wheels),
        "install": f"tar xzf {out.name} && sudo {NAME}/install.sh",
    }


def _write_profile(profile_path: Path, profile: Profile, config: Path) -> None:
    """The profile with every file it names copied beside it, and its state in STATE_DIR."""
    raw = read_toml(profile_path, BundleError)
    for field, source in profile.named_files():
        *tables, key = field.split(".")
        target = config / source.name
        if target.exists():
            raise BundleError(
                f"{profile_path}: {field}: {source.name} is also the name of another file the"
                " profile names: rename one of them"
            )
        shutil.copyfile(source, target)
        target.chmod(0o600 if key in _SECRETS else 0o644)
        table = raw
        for name in tables:
            table = table[name]
        table[key] = source.name
    raw["model"]["slot_dir"] = f"{STATE_DIR}/slots"
    raw["buffer"]["spool_dir"] = f"{STATE_DIR}/spool"
    header = f"# {profile.device.id}: written by edge-runtime bundle from {profile_path.name}\n"
    profile_toml = config / "profile.toml"
    profile_toml.write_text(header + tomli_w.dumps(raw))
    profile_toml.chmod(0o600)  # it may hold a password itself


def needs_system_packages(profile: Profile) -> bool:
    """Whether the device's venv must see the distribution's packages: picamera2 comes from
    them (python3-picamera2 on Raspberry Pi OS), not from PyPI."""
    return profile.source.uri is not None and profile.source.uri.startswith("picamera2:")


def _existing(path: Path, option: str) -> Path:
    if not path.is_file():
        raise BundleError(f"{option} {path}: no such file")
    return path


def _wheels(
    into: Path,
    target: Target,
    extras: list[str],
    wheel: Path | None,
    find_links: list[Path],
    added: list[Path],
) -> list[Path]:
    """The project's wheel (``wheel``, else built from the source tree), the ``added`` ones,
    and all their dependencies'."""
    into.mkdir()
    if wheel is None:
        if not (PROJECT_DIR / "pyproject.toml").is_file():
            raise BundleError(
                "no project source beside this installation: give --wheel amstream-*.whl"
            )
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(into), str(PROJECT_DIR))
        wheel = next(into.glob("amstream-*.whl"))
    else:
        wheel = Path(shutil.copy(_existing(wheel, "--wheel"), into))
    added = [Path(shutil.copy(w, into)) for w in added]
    links = [a for d in find_links for a in ("--find-links", str(d))]
    wanted = requirements(wheel, target.python, extras)
    _pip("download", "-d", str(into), *links, *target.pip_options(), *wanted, *map(str, added))
    return sorted(into.glob("*.whl"))


def requirements(wheel: Path, python: str, extras: list[str]) -> list[str]:
    """The wheel's requirements with ``extras`` on a ``python`` device, markers evaluated for
    it: pip download evaluates them for the Python it runs on, whatever --python-version says."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(name))
    environments = [{"python_version": python, "python_full_version": f"{python}.0",
                     "extra": extra} for extra in ("", *extras)]  # fmt: skip
    wanted = []
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate(env) for env in environments):
            req.marker = None
            wanted.append(str(req))
    return wanted


def _pip(*args: str) -> None:
    """pip in this interpreter; a failure is one line with pip's last words."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no message"]
        why = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1])
        raise BundleError(f"pip {args[0]} failed: {why} (is the package index reachable?)")


def _write_env(path: Path, values: dict[str, str]) -> None:
    """What install.sh reads (root sources the file: every value quoted for the shell)."""
    path.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))


def _tar(root: Path, out: Path) -> None:
    """``root`` as a .tar.gz, written whole or not at all, readable by its owner only."""
    tmp = out.with_name(out.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
            tar.add(root, arcname=root.name)
        os.replace(tmp, out)
    except OSError as exc:
        raise BundleError(f"--out {out}: cannot write: {exc.strerror or exc}") from exc
