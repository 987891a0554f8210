"""Ed25519 signatures on model and update messages (SPEC §5).

The trainer signs, the device verifies with the public key from its profile. The signature
covers the device it is meant for, the versions, the format and the sha256 of both the body and
(for updates) the resulting model, so it cannot be replayed to another device or another base.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared_schema.messages import Model, Update

_DOMAIN = b"amstream-signature-v1\x00"


def signing_payload(device_id: str, msg: Model | Update, body_sha256: str) -> bytes:
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


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM public key, or the raw 32 bytes (as written by ``save_keypair``)."""
    data = Path(path).read_bytes()
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
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def save_keypair(private_path: Path, public_path: Path) -> Ed25519PrivateKey:
    """Generate a trainer key pair: PEM private key (mode 600) and PEM public key."""
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key
