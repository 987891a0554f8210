"""The envelope every payload travels in: versioned header + binary body.

Layout (all integers big-endian):

    b"AMS" | schema version (u8) | header length (u32) | header (UTF-8 JSON) | body

The JSON header carries the sender's device id, a sequence number unique within the sender's
``boot`` (a random id per process start), the send time, the body's length and sha256, and the
typed message. ``decode`` checks, in order: framing, schema version, size limits, the header's
every field, body length, body hash; any failure raises one ``ProtocolError``.
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from shared_schema.errors import ProtocolError, Reason
from shared_schema.messages import (
    MAX_MQTT_PAYLOAD,
    SCHEMA_VERSION,
    AnyMessage,
    Count,
    MessageType,
    NonNeg,
    Sha256Hex,
)
from shared_schema.topics import MAX_DEVICE_ID_LEN

MAGIC = b"AMS"
_PREFIX = struct.Struct(">3sBI")
PREFIX_SIZE = _PREFIX.size

BootId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
DeviceIdField = Annotated[
    str, StringConstraints(pattern=rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_DEVICE_ID_LEN - 1}}}$")
]

# Bodies are only for the types that carry bytes; everything else must arrive empty.
DEFAULT_BODY_LIMITS: dict[MessageType, int] = {
    MessageType.SEGMENT: 32 * 2**20,
    MessageType.MODEL: 256 * 2**20,
    MessageType.UPDATE: 64 * 2**20,
    MessageType.GRADIENT: 2**16,  # a byte per macroblock: 4096 x 4096 pixels
    MessageType.CHUNK: MAX_MQTT_PAYLOAD,
}


class Limits(BaseModel):
    """Receiver-side size limits; body limits can be changed per body-carrying type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header_bytes: int = Field(256 * 1024, ge=1024, le=16 * 2**20)
    body_bytes: dict[MessageType, Annotated[int, Field(ge=0, le=2**40)]] = Field(
        default_factory=dict
    )

    def model_post_init(self, _context: object) -> None:
        bodyless = sorted(t.value for t in self.body_bytes if t not in DEFAULT_BODY_LIMITS)
        if bodyless:
            raise ValueError(f"these message types carry no body: {', '.join(bodyless)}")

    def body_limit(self, msg_type: MessageType) -> int:
        return self.body_bytes.get(msg_type, DEFAULT_BODY_LIMITS.get(msg_type, 0))


DEFAULT_LIMITS = Limits()


class Header(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    device_id: DeviceIdField
    seq: Count
    boot: BootId
    sent_at: NonNeg
    body_len: Annotated[int, Field(ge=0)]
    body_sha256: Sha256Hex
    msg: AnyMessage


@dataclass(frozen=True)
class Envelope:
    header: Header
    body: bytes

    @property
    def msg(self) -> AnyMessage:
        return self.header.msg

    @property
    def type(self) -> MessageType:
        return MessageType(self.header.msg.type)

    @property
    def device_id(self) -> str:
        return self.header.device_id

    @property
    def key(self) -> tuple[str, str, int]:
        """Identifies one message of one sender across QoS 1 redeliveries."""
        return (self.header.device_id, self.header.boot, self.header.seq)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(
    msg: AnyMessage,
    *,
    device_id: str,
    seq: int,
    boot: str,
    body: bytes = b"",
    sent_at: float | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Frame one message; the sender is held to the same limits as the receiver."""
    msg_type = MessageType(msg.type)
    if len(body) > limits.body_limit(msg_type):
        raise ProtocolError(
            Reason.OVERSIZE,
            f"{msg_type.value} body of {len(body)} bytes exceeds {limits.body_limit(msg_type)}",
        )
    try:
        header = Header(
            device_id=device_id,
            seq=seq,
            boot=boot,
            sent_at=time.time() if sent_at is None else sent_at,
            body_len=len(body),
            body_sha256=sha256_hex(body),
            msg=msg,
        )
    except ValidationError as exc:
        raise ProtocolError(Reason.BAD_HEADER, _first_error(exc)) from exc
    header_bytes = header.model_dump_json().encode()
    if len(header_bytes) > limits.header_bytes:
        raise ProtocolError(
            Reason.OVERSIZE, f"header of {len(header_bytes)} bytes exceeds {limits.header_bytes}"
        )
    return _PREFIX.pack(MAGIC, SCHEMA_VERSION, len(header_bytes)) + header_bytes + body


def decode(data: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Parse and validate one envelope; raises ProtocolError on anything malformed."""
    view = memoryview(data)
    if len(view) < PREFIX_SIZE:
        raise ProtocolError(Reason.TRUNCATED, f"{len(view)} bytes is shorter than the prefix")
    magic, version, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError(Reason.BAD_MAGIC, f"payload starts with {bytes(view[:3])!r}")
    if version != SCHEMA_VERSION:
        raise ProtocolError(
            Reason.UNSUPPORTED_VERSION, f"schema version {version}, expected {SCHEMA_VERSION}"
        )
    if header_len > limits.header_bytes:
        raise ProtocolError(
            Reason.OVERSIZE, f"header of {header_len} bytes exceeds {limits.header_bytes}"
        )
    body_start = PREFIX_SIZE + header_len
    if len(view) < body_start:
        raise ProtocolError(
            Reason.TRUNCATED, f"header needs {header_len} bytes, {len(view) - PREFIX_SIZE} present"
        )
    try:
        header = Header.model_validate_json(bytes(view[PREFIX_SIZE:body_start]))
    except ValidationError as exc:
        raise ProtocolError(Reason.BAD_HEADER, _first_error(exc)) from exc
    msg_type = MessageType(header.msg.type)
    limit = limits.body_limit(msg_type)
    if header.body_len > limit:
        raise ProtocolError(
            Reason.OVERSIZE, f"{msg_type.value} body of {header.body_len} bytes exceeds {limit}"
        )
    present = len(view) - body_start
    if present < header.body_len:
        raise ProtocolError(
            Reason.TRUNCATED, f"body needs {header.body_len} bytes, {present} present"
        )
    if present > header.body_len:
        raise ProtocolError(
            Reason.TRAILING_BYTES, f"{present - header.body_len} bytes after the body"
        )
    body = bytes(view[body_start:])
    if sha256_hex(body) != header.body_sha256:
        raise ProtocolError(Reason.BAD_HASH, "body sha256 does not match the header")
    return Envelope(header, body)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "header"
    return f"{where}: {err['msg']} ({exc.error_count()} error(s))"[:300]
