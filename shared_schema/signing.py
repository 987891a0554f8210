"""Ed25519 signatures on what the trainer sends down: models, updates and controls (SPEC §5).

The trainer signs, the device verifies with the keys from its profile (a keyring: the current
key and the next one, so a rotation never strands a device). The signature covers the device
it is meant for, the message type, the versions, the format, the key id and the sha256 of both
the body and (for updates) the resulting model, and an expiry, so it cannot be replayed to
another device, another base, as another kind of message or after it expires (a week by
default: a device offline longer gets fresh ones); a device also refuses a version at or below
the one it runs, so an old signed model cannot be replayed to it either.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared_schema.config_files import ConfigFileError, write_private
from shared_schema.envelope import sha256_hex
from shared_schema.messages import AckReason, Control, Gradient, Model, Update

_DOMAIN = b"amstream-signature-v3\x00"
Signed = Model | Update | Control | Gradient
SIGNATURE_LIFETIME_S = 7 * 24 * 3600.0  # as long as the broker keeps an offline device's queue


def key_id(key: Ed25519PublicKey) -> str:
    """A key's short name: the first 16 hex digits of the sha256 of its raw 32 bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """The trainer's side: every signed message leaves through ``sign``."""

    def __init__(self, key: Ed25519PrivateKey, lifetime_s: float = SIGNATURE_LIFETIME_S) -> None:
        self._key = key
        self.key_id = key_id(key.public_key())
        self.lifetime_s = lifetime_s

    def sign(self, device_id: str, msg: Signed, body: bytes = b"") -> Signed:
        """``msg`` for ``device_id`` with its key id, expiry and signature (``body``: what
        travels with it, whose hash the signature covers)."""
        expires_at = time.time() + self.lifetime_s
        fields = {"key_id": self.key_id, "expires_at": expires_at, "signature": None}
        named = msg.model_copy(update=fields)
        payload = signing_payload(device_id, named, sha256_hex(body))
        return named.model_copy(update={"signature": sign(self._key, payload)})


class Keyring:
    """The device's side: the trainer keys it trusts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {key_id(key): key for key in keys}
        if not self._keys:
            raise ValueError("a keyring needs at least one key")

    @classmethod
    def load(cls, paths: Iterable[Path]) -> Keyring:
        return cls(load_public_key(path) for path in paths)

    def refusal(
        self, device_id: str, msg: Signed, body_sha256: str, now: float | None = None
    ) -> AckReason | None:
        """Why ``msg`` is refused, or None: it must be signed for ``device_id`` by a key of
        this ring, with an expiry, and not be past it."""
        key = self._keys.get(msg.key_id or "")
        payload = signing_payload(device_id, msg, body_sha256)
        if key is None or msg.expires_at is None or not verify(key, payload, msg.signature):
            return AckReason.BAD_SIGNATURE
        if (time.time() if now is None else now) > msg.expires_at:
            return AckReason.EXPIRED
        return None

    def verify(self, device_id: str, msg: Signed, body_sha256: str) -> bool:
        """Whether ``msg`` is signed for ``device_id`` by a key of this ring, and unexpired."""
        return self.refusal(device_id, msg, body_sha256) is None


def signing_payload(device_id: str, msg: Signed, body_sha256: str) -> bytes:
    """The canonical bytes a signature covers (everything but the signature itself)."""
    fields = msg.model_dump(mode="json", exclude={"signature"})
    return (
        _DOMAIN
        + json.dumps(
            {"device_id": device_id, "body_sha256": body_sha256, "msg": fields},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
    )


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    return key.sign(payload).hex()


def verify(key: Ed25519PublicKey, payload: bytes, signature_hex: str | None) -> bool:
    if not signature_hex:
        return False
    try:
        key.verify(bytes.fromhex(signature_hex), payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def _read_key(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigFileError(
            f"{path}: cannot read: {exc.strerror}: make the keys with cloud-trainer keys"
            " generate --dir DIR (the default configs look in $AMS_KEY_DIR)"
        ) from exc


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM public key, or the raw 32 bytes (as written by ``save_keypair``)."""
    data = _read_key(path)
    try:
        key = (
            Ed25519PublicKey.from_public_bytes(data)
            if len(data) == 32
            else serialization.load_pem_public_key(data)
        )
    except ValueError as exc:
        raise ValueError(f"{path}: not an Ed25519 public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read_key(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigFileError(f"{path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigFileError(f"{path}: not an Ed25519 private key")
    return key


def save_keypair(private_path: Path, public_path: Path) -> Ed25519PrivateKey:
    """Generate a trainer key pair: PEM private key (mode 600) and PEM public key."""
    key = Ed25519PrivateKey.generate()
    write_private(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key
