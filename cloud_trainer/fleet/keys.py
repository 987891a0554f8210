"""``cloud-trainer keys``: the trainer's signing keys, a current one and the next one.

A key directory holds two Ed25519 key pairs: ``trainer_ed25519.pem``/``.pub`` (the trainer
signs with it) and ``trainer_ed25519.next.pem``/``.next.pub`` (devices trust it already).
Devices are flashed with both public keys (``[model] public_key`` and ``next_public_key``);
``rotate`` makes the next key the current one and a fresh next key, so every device keeps
verifying what the trainer signs, and the old current key is kept under ``retired/``. After a
rotation, re-provision the devices with the two new public keys before the next rotation.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared_schema.config_files import ConfigFileError
from shared_schema.signing import key_id, load_private_key, load_public_key, save_keypair

CURRENT = "trainer_ed25519"
NEXT = "trainer_ed25519.next"
RETIRED = "retired"


class KeyDirError(ConfigFileError):
    """A key directory that cannot be used as asked; the message names it and the fix."""


def _pair(directory: Path, stem: str) -> tuple[Path, Path]:
    return directory / f"{stem}.pem", directory / f"{stem}.pub"


def describe(directory: Path) -> dict[str, object]:
    """The key ids and paths of a key directory, and what to put in the configs."""
    current, following = _pair(directory, CURRENT), _pair(directory, NEXT)
    for path in (*current, *following):
        if not path.is_file():
            raise KeyDirError(f"{path}: missing: run cloud-trainer keys generate --dir {directory}")
    return {
        "current": _entry(current),
        "next": _entry(following),
        "trainer.toml": {"updates": {"signing_key": str(current[0])}},
        "device profile": {
            "model": {"public_key": str(current[1]), "next_public_key": str(following[1])}
        },
    }


def _entry(pair: tuple[Path, Path]) -> dict[str, str]:
    private, public = pair
    return {"key_id": _id(public), "private": str(private), "public": str(public)}


def generate(directory: Path) -> dict[str, object]:
    """Make a current and a next key pair in ``directory``; never overwrites a key."""
    existing = [p for stem in (CURRENT, NEXT) for p in _pair(directory, stem) if p.exists()]
    if existing:
        raise KeyDirError(f"{existing[0]}: exists: keys are never overwritten (rotate them)")
    directory.mkdir(parents=True, exist_ok=True)
    for stem in (CURRENT, NEXT):
        save_keypair(*_pair(directory, stem))
    return describe(directory)


def for_this_run(directory: Path) -> tuple[Path, dict[str, str]]:
    """Fresh keys for a self-contained run (the demo, a benchmark): the trainer's signing key
    and the ``[model]`` keys of its devices' profiles."""
    generate(directory)
    private, public = _pair(directory, CURRENT)
    return private, {"public_key": str(public), "next_public_key": str(_pair(directory, NEXT)[1])}


def rotate(directory: Path) -> dict[str, object]:
    """The next key becomes the current one, a fresh key the next; the old current key moves
    to ``retired/<key id>``. Each step is a rename, so a crash leaves usable keys."""
    describe(directory)  # both pairs must be there
    retired = directory / RETIRED
    retired.mkdir(exist_ok=True)
    old_id = _id(_pair(directory, CURRENT)[1])
    fresh = ".fresh"
    save_keypair(*_pair(directory, fresh))
    for source, target in zip(_pair(directory, CURRENT), _pair(retired, old_id), strict=True):
        os.replace(source, target)
    for old, new in ((NEXT, CURRENT), (fresh, NEXT)):
        for source, target in zip(_pair(directory, old), _pair(directory, new), strict=True):
            os.replace(source, target)
    return describe(directory) | {"retired": old_id}


def show(path: Path) -> dict[str, str]:
    """The key id of a private (.pem) or public key file."""
    public = _public(path)
    return {"path": str(path), "key_id": key_id(public)}


def _public(path: Path) -> Ed25519PublicKey:
    try:
        return load_public_key(path)
    except ConfigFileError:
        raise  # it cannot be read: the error says so
    except ValueError:  # not a public key: a private one, then
        try:
            return load_private_key(path).public_key()
        except ConfigFileError as exc:
            raise KeyDirError(f"{path}: not an Ed25519 key: {exc}") from exc


def _id(public_path: Path) -> str:
    return key_id(load_public_key(public_path))
