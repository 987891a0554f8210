"""Topic tree and delivery policy (SPEC §4): the only place topic strings are built or parsed.

    <prefix>/<device_id>/up/{hello,segment,telemetry,results,ack}
    <prefix>/<device_id>/down/{model,update,control,ack}
    <prefix>/<device_id>/status                                   (retained, last will)
    <prefix>/<device_id>/metrics                  (retained, the trainer's session figures)

Chunks of a large message travel on the topic of the message they belong to.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared_schema.compat import UTC, StrEnum
from shared_schema.errors import ProtocolError, Reason
from shared_schema.messages import MessageType

MAX_DEVICE_ID_LEN = 64
MAX_PREFIX_LEN = 128
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PREFIX_LEVEL_RE = re.compile(r"[A-Za-z0-9_.-]+")


class Direction(StrEnum):
    UP = "up"  # device → trainer
    DOWN = "down"  # trainer → device


# Which direction each message type may travel; None: directly under the device (metrics).
ROUTES: dict[MessageType, frozenset[Direction | None]] = {
    MessageType.HELLO: frozenset({Direction.UP}),
    MessageType.SEGMENT: frozenset({Direction.UP}),
    MessageType.TELEMETRY: frozenset({Direction.UP}),
    MessageType.RESULTS: frozenset({Direction.UP}),
    MessageType.ACK: frozenset({Direction.UP, Direction.DOWN}),
    MessageType.MODEL: frozenset({Direction.DOWN}),
    MessageType.UPDATE: frozenset({Direction.DOWN}),
    MessageType.CONTROL: frozenset({Direction.DOWN}),
    MessageType.METRICS: frozenset({None}),
    MessageType.GRADIENT: frozenset({Direction.DOWN}),
}


@dataclass(frozen=True)
class Delivery:
    qos: int
    retain: bool = False
    expiry_s: int | None = None  # MQTT 5 message expiry; ignored over 3.1.1
    dedupe: bool = True  # receivers drop QoS 1 duplicates by (device, boot, seq)


# QoS 1 where loss matters (SPEC §4); retained where the latest value is the state.
DELIVERY: dict[MessageType, Delivery] = {
    MessageType.HELLO: Delivery(qos=1),
    MessageType.SEGMENT: Delivery(qos=1),
    MessageType.TELEMETRY: Delivery(qos=0, expiry_s=120),
    MessageType.RESULTS: Delivery(qos=0, expiry_s=30),
    MessageType.ACK: Delivery(qos=1),
    MessageType.MODEL: Delivery(qos=1),
    MessageType.UPDATE: Delivery(qos=1),
    MessageType.CONTROL: Delivery(qos=1, retain=True),
    MessageType.METRICS: Delivery(qos=0, retain=True, dedupe=False),
    # one per interval, each superseding the last: a late one is of no use
    MessageType.GRADIENT: Delivery(qos=0, expiry_s=60),
}


class Plain(StrEnum):
    """Topics for people and home-automation tools (SPEC §10): plain text or JSON, retained,
    beside the envelopes and never parsed as one."""

    STATUS = "status"  # "online" / "offline", by the device; its last will says offline
    STATE = "state"  # the device's state as JSON (model version, fps, sampling, Kbps, ...)
    SESSION = "session"  # the trainer's figures of the device's session, as JSON


ONLINE, OFFLINE = b"online", b"offline"
# Retained and QoS 1: the latest value is what a late subscriber needs, and it must arrive.
PLAIN_DELIVERY = Delivery(qos=1, retain=True, dedupe=False)


def plain_topic(prefix: str, device_id: str, kind: Plain) -> str:
    return f"{validate_prefix(prefix)}/{validate_device_id(device_id)}/{kind.value}"


def plain_json(values: dict[str, Any]) -> bytes:
    """A plain topic's JSON (``state``, ``session``): strict JSON, stamped with its UTC time."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value if isinstance(value, str | int | float | bool | None) else str(value)

    stamped = {**values, "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}
    return json.dumps(clean(stamped), sort_keys=True, allow_nan=False).encode()


def parse_plain_topic(prefix: str, topic: str) -> tuple[str, Plain] | None:
    """(device id, kind) of a plain topic under ``prefix``; None for any other topic."""
    parts = topic[len(prefix) + 1 :].split("/") if topic.startswith(prefix + "/") else []
    if len(parts) != 2 or parts[1] not in set(Plain):
        return None
    return validate_device_id(parts[0]), Plain(parts[1])


@dataclass(frozen=True)
class Topic:
    prefix: str
    device_id: str
    type: MessageType
    direction: Direction | None

    def __str__(self) -> str:
        if self.direction is None:
            return f"{self.prefix}/{self.device_id}/{self.type.value}"
        return f"{self.prefix}/{self.device_id}/{self.direction.value}/{self.type.value}"


def validate_device_id(device_id: str) -> str:
    """A device id is one topic level: no wildcards, no '/', no leading '$', bounded length."""
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.fullmatch(device_id):
        raise ProtocolError(
            Reason.BAD_TOPIC,
            f"invalid device id {device_id!r}: 1-{MAX_DEVICE_ID_LEN} characters of "
            "letters, digits, '_', '.', '-', starting with a letter or digit",
        )
    return device_id


def validate_prefix(prefix: str) -> str:
    levels = prefix.split("/") if isinstance(prefix, str) else []
    if (
        not levels
        or len(prefix) > MAX_PREFIX_LEN
        or not all(_PREFIX_LEVEL_RE.fullmatch(level) for level in levels)
    ):
        raise ProtocolError(
            Reason.BAD_TOPIC,
            f"invalid topic prefix {prefix!r}: '/'-separated levels of letters, digits, "
            f"'_', '.', '-', at most {MAX_PREFIX_LEN} characters",
        )
    return prefix


def _direction_for(msg_type: MessageType, direction: Direction | None) -> Direction | None:
    allowed = ROUTES.get(msg_type)
    if allowed is None:
        raise ProtocolError(Reason.WRONG_TYPE, f"{msg_type.value} has no topic of its own")
    if direction is None and len(allowed) == 1:
        (direction,) = allowed
    if direction not in allowed:
        raise ProtocolError(
            Reason.WRONG_TYPE, f"{msg_type.value} does not travel {direction or 'unrouted'}"
        )
    return direction


def topic_for(
    prefix: str, device_id: str, msg_type: MessageType, direction: Direction | None = None
) -> str:
    """The topic a message of this type for this device travels on."""
    return str(
        Topic(
            validate_prefix(prefix),
            validate_device_id(device_id),
            msg_type,
            _direction_for(msg_type, direction),
        )
    )


def parse_topic(prefix: str, topic: str) -> Topic:
    """Inverse of ``topic_for``; raises ProtocolError(BAD_TOPIC) for anything else."""
    head = prefix + "/"
    if not topic.startswith(head):
        raise ProtocolError(Reason.BAD_TOPIC, f"{topic!r} is not under prefix {prefix!r}")
    parts = topic[len(head) :].split("/")
    try:
        if len(parts) == 2:
            device_id, name = parts
            direction = None
        elif len(parts) == 3:
            device_id, raw_direction, name = parts
            direction = Direction(raw_direction)
        else:
            raise ValueError("wrong number of levels")
        msg_type = MessageType(name)
    except ValueError as exc:
        raise ProtocolError(Reason.BAD_TOPIC, f"unknown topic {topic!r}") from exc
    validate_device_id(device_id)
    if direction not in ROUTES.get(msg_type, frozenset()):
        raise ProtocolError(Reason.BAD_TOPIC, f"unknown topic {topic!r}")
    return Topic(prefix, device_id, msg_type, direction)


def device_subscriptions(prefix: str, device_id: str) -> list[str]:
    """What a device subscribes to: everything sent down to it."""
    return [f"{validate_prefix(prefix)}/{validate_device_id(device_id)}/down/#"]


def trainer_subscriptions(prefix: str) -> list[str]:
    """What the trainer subscribes to: every device's uplink and status."""
    validate_prefix(prefix)
    return [f"{prefix}/+/up/#", f"{prefix}/+/{Plain.STATUS.value}"]


def shared_subscriptions(prefix: str, group: str) -> list[str]:
    """The trainer's subscriptions shared by the fronts of one group (MQTT 5): the broker hands
    each message to one of them."""
    group = validate_device_id(group)  # a single level: no '/', '+' or '#'
    return [f"$share/{group}/{f}" for f in trainer_subscriptions(prefix)]


class Access(StrEnum):
    READ = "read"
    WRITE = "write"


# What each side may touch (the broker's ACL is generated from this: cloud_trainer.fleet):
# a device writes only its own uplink, status and state and reads only its own downlink; the
# trainer reads every uplink and status and writes every downlink, metrics and session; an
# observer reads all.
def device_grants(prefix: str, device_id: str) -> list[tuple[Access, str]]:
    own = f"{validate_prefix(prefix)}/{validate_device_id(device_id)}"
    return [
        (Access.WRITE, f"{own}/{Direction.UP.value}/#"),
        *((Access.WRITE, f"{own}/{kind.value}") for kind in (Plain.STATUS, Plain.STATE)),
        *((Access.READ, f) for f in device_subscriptions(prefix, device_id)),
    ]


def trainer_grants(prefix: str) -> list[tuple[Access, str]]:
    every = f"{validate_prefix(prefix)}/+"
    return [
        *((Access.READ, f) for f in trainer_subscriptions(prefix)),
        (Access.WRITE, f"{every}/{Direction.DOWN.value}/#"),
        (Access.WRITE, f"{every}/{MessageType.METRICS.value}"),
        (Access.WRITE, f"{every}/{Plain.SESSION.value}"),
    ]


def observer_grants(prefix: str) -> list[tuple[Access, str]]:
    return [(Access.READ, f"{validate_prefix(prefix)}/#")]
