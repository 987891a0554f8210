"""Seeded fuzzing of the wire protocol and of update bodies, for tests/test_fuzz.py.

Every generated case is a function of (seed, subject, index): ``random.Random`` seeded with that
string, so a failure names the case that reproduces it (``python -m tests.fuzzing replay ...``).
The suite runs the fuzz in fresh interpreters (``python -m tests.fuzzing protocol|updates``) so
that their peak RSS can be read before and after; each prints one JSON report.

Protocol cases are MQTT messages (a topic and a payload) handed to what the endpoint subscribes
with, ``Endpoint.receive``, exactly as the MQTT link's dispatcher does; update cases are update
messages for the real student, through a ``DeviceEndpoint`` into ``ModelSlots``.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import logging
import os
import random
import resource
import string
import struct
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.backends.litert import LiteRtConfig
from edge_runtime.model_slots import STATE_FILE, ModelSlots
from edge_runtime.swap import Handover
from shared_schema.endpoint import DeviceEndpoint, Endpoint, TrainerEndpoint
from shared_schema.envelope import DEFAULT_LIMITS, PREFIX_SIZE, Envelope, decode, encode, sha256_hex
from shared_schema.errors import Reason
from shared_schema.messages import (
    MAX_MQTT_PAYLOAD,
    MAX_ROI_REGIONS,
    Ack,
    AckReason,
    Chunk,
    Control,
    EncoderKnobs,
    Gradient,
    Hello,
    Message,
    MessageType,
    Metrics,
    Model,
    ModelFormat,
    RegionQuality,
    Results,
    Segment,
    Telemetry,
    Update,
    UpdateFormat,
    ZooMetrics,
)
from shared_schema.mqtt import BrokerConfig, Inbound
from shared_schema.signing import Keyring, Signer, load_private_key
from shared_schema.tflite_file import TFLiteFile
from shared_schema.topics import DELIVERY, ROUTES, Direction
from shared_schema.update_formats import ams_fp16, apply_update, qdelta, zpatch

CASES_ENV = "AMS_FUZZ_CASES"
SEED_ENV = "AMS_FUZZ_SEED"
DEFAULT_CASES = 10_000
DEFAULT_SEED = 20_260_601
WARMUP_CASES = 200  # per subject, before the RSS baseline; not counted
MAX_FAILURES = 20  # kept per subject (all are counted)

PREFIX = "ams"
DEVICE = "cam-1"
TRAINER_ID = "trainer"

DELIVERED, DUPLICATE, PENDING = "delivered", "duplicate", "pending"
REJECTED = frozenset(f"rejected.{r.value}" for r in Reason)
ANY = REJECTED | {DELIVERED}


MIN_CASES = DEFAULT_CASES  # fewer leave rare refusals unreached (the suite checks every one ran)


def fuzz_cases() -> int:
    """Payloads per message type and corrupt bodies per update format: $AMS_FUZZ_CASES."""
    cases = int(os.environ.get(CASES_ENV, DEFAULT_CASES))
    if cases < MIN_CASES:
        raise ValueError(f"{CASES_ENV}={cases}: at least {MIN_CASES}")
    return cases


def fuzz_seed() -> int:
    return int(os.environ.get(SEED_ENV, DEFAULT_SEED))


def case_rng(seed: int, subject: str, index: int) -> random.Random:
    return random.Random(f"{seed}/{subject}/{index}")


def rejected(*reasons: Reason) -> frozenset[str]:
    return frozenset(f"rejected.{r.value}" for r in reasons)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- random valid messages ------------------------------------------------------------------------

_ALNUM = string.ascii_letters + string.digits
_NAME_TAIL = _ALNUM + "_.:+-"
_ID_TAIL = _ALNUM + "_.-"
_TEXT = _ALNUM + ' _-./:"\\\n\t\x00\x7f' + "éß€😀\u2028\ufeff"


def _length(rng: random.Random, most: int) -> int:
    return rng.choice((0, 1, rng.randint(0, min(most, 16)), rng.randint(0, most), most))


def _word(rng: random.Random, tail: str, most: int) -> str:
    return rng.choice(_ALNUM) + "".join(rng.choices(tail, k=_length(rng, most - 1)))


def name(rng: random.Random) -> str:
    return _word(rng, _NAME_TAIL, 64)


def device_id(rng: random.Random) -> str:
    return _word(rng, _ID_TAIL, 64)


def stranger(device: str) -> str:
    """A valid device id other than ``device``."""
    return device[:62] + ("-y" if device.endswith("-z") else "-z")


def text(rng: random.Random, most: int) -> str:
    return "".join(rng.choices(_TEXT, k=_length(rng, most)))


def sha(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


def maybe(rng: random.Random, make: Callable[[], Any]) -> Any:
    return None if rng.random() < 0.3 else make()


def count(rng: random.Random) -> int:
    return rng.choice((0, 1, rng.randrange(1000), rng.randrange(2**63), 2**63))


def version(rng: random.Random) -> int:
    return rng.choice((0, 1, rng.randrange(1000), 2**53 - 1))


def nonneg(rng: random.Random) -> float:
    return rng.choice((0.0, rng.random() * 10, rng.uniform(0, 1e9), 1e300, 5e-324))


def pixels(rng: random.Random) -> int:
    return rng.choice((1, 16384, rng.randint(1, 16384), 513))


def fps(rng: random.Random) -> float:
    return rng.choice((240.0, 1e-9, rng.uniform(1e-3, 240.0)))


def body(rng: random.Random, most: int = 4096) -> bytes:
    return rng.randbytes(_length(rng, most))


def _hello(rng: random.Random) -> Message:
    return Hello(
        profile=name(rng),
        device_class=name(rng),
        runtime_version=text(rng, 64),
        backend=name(rng),
        backends=tuple(name(rng) for _ in range(_length(rng, 16))),
        input_size=(pixels(rng), pixels(rng)),
        model_version=maybe(rng, lambda: version(rng)),
        model_sha256=maybe(rng, lambda: sha(rng)),
        update_formats=tuple(rng.sample(list(UpdateFormat), rng.randint(0, 3))),
        max_message_bytes=rng.choice((4096, MAX_MQTT_PAYLOAD, rng.randint(4096, 2**24))),
    )


def _segment(rng: random.Random) -> Message:
    n = rng.choice((1, 2, rng.randint(1, 64), 4096)) if rng.random() < 0.02 else rng.randint(1, 8)
    return Segment(
        width=pixels(rng),
        height=pixels(rng),
        timestamps=tuple(sorted(nonneg(rng) for _ in range(n))),
        sampling_rate_fps=fps(rng),
        bitrate_kbps=rng.choice((1e6, 1e-6, rng.uniform(1.0, 5000.0))),
        model_version=maybe(rng, lambda: version(rng)),
        scene_cut=rng.random() < 0.1,
    )


def _telemetry(rng: random.Random) -> Message:
    counters = {name(rng): count(rng) for _ in range(_length(rng, 128))}
    return Telemetry(
        **{f: nonneg(rng) for f in ("uptime_s", "fps", "latency_p50_ms", "latency_p95_ms")},
        **{
            f: count(rng)
            for f in ("frames", "frames_sampled", "swaps", "bytes_up", "bytes_down", "spool_depth")
        },
        model_version=maybe(rng, lambda: version(rng)),
        counters=counters,
    )


def _results(rng: random.Random) -> Message:
    fractions = tuple(rng.choice((0.0, 1.0, rng.random())) for _ in range(_length(rng, 256)))
    return Results(
        frame_ts=nonneg(rng),
        frames=count(rng),
        model_version=maybe(rng, lambda: version(rng)),
        class_fractions=fractions,
    )


def _ack(rng: random.Random) -> Message:
    ok = rng.random() < 0.5
    return Ack(
        ref_type=rng.choice(("model", "update", "control", "segment")),
        ref_seq=count(rng),
        ok=ok,
        reason=None if ok else rng.choice(list(AckReason)),
        detail=text(rng, 1024),
        model_version=maybe(rng, lambda: version(rng)),
        model_sha256=maybe(rng, lambda: sha(rng)),
        resync_from=maybe(rng, lambda: version(rng)),
    )


def _signature(rng: random.Random) -> dict[str, str | None]:
    return {
        "key_id": maybe(rng, lambda: rng.randbytes(8).hex()),
        "signature": maybe(rng, lambda: rng.randbytes(64).hex()),
    }


def _model(rng: random.Random) -> Message:
    return Model(
        version=version(rng),
        format=rng.choice(list(ModelFormat)),
        name=text(rng, 128),
        **_signature(rng),
    )


def _update(rng: random.Random) -> Message:
    base = rng.choice((0, rng.randrange(1000), 2**53 - 1))
    return Update(
        base_version=base,
        base_sha256=sha(rng),
        new_version=rng.randint(base + 1, 2**53),
        result_sha256=sha(rng),
        format=rng.choice(list(UpdateFormat)),
        **_signature(rng),
    )


def _roi(rng: random.Random) -> RegionQuality:
    cols, rows = rng.choice((1, MAX_ROI_REGIONS, rng.randint(1, 8))), rng.randint(1, 8)
    qoffsets = tuple(rng.choice((-1.0, 0.0, 1.0, rng.uniform(-1, 1))) for _ in range(cols * rows))
    return RegionQuality(cols=cols, rows=rows, qoffsets=qoffsets)


def _control(rng: random.Random) -> Message:
    knobs = EncoderKnobs(
        bitrate_kbps=rng.choice((10.0, 1e6, rng.uniform(10.0, 5000.0))),
        width=maybe(rng, lambda: pixels(rng)),
        height=maybe(rng, lambda: pixels(rng)),
        qp=maybe(rng, lambda: rng.randint(0, 51)),
        roi=maybe(rng, lambda: _roi(rng)),
    )
    return Control(
        sampling_rate_fps=fps(rng),
        t_update_s=rng.choice((86_400.0, 1e-9, rng.uniform(0.1, 600.0))),
        encoder=maybe(rng, lambda: knobs),
        rollback_to=maybe(rng, lambda: version(rng)),
        **_signature(rng),
    )


_METRIC_NAMED = {"type", "mirror_version", "device_version", "sampling_rate_fps", "t_update_s",
                 "training_seconds_last", "training_seconds_mean", "training_seconds_total",
                 "classes", "zoo"}  # fmt: skip
_ZOO_RATES = {"reuse_rate", "gate_hit_rate"}
_METRIC_COUNTS = tuple(f for f in Metrics.model_fields if f not in _METRIC_NAMED)  # the rest


def _metrics(rng: random.Random) -> Message:
    return Metrics(
        mirror_version=version(rng),
        device_version=maybe(rng, lambda: version(rng)),
        sampling_rate_fps=fps(rng),
        t_update_s=rng.choice((1e-9, 1e9, rng.uniform(0.1, 600.0))),
        training_seconds_last=maybe(rng, lambda: nonneg(rng)),
        training_seconds_mean=maybe(rng, lambda: nonneg(rng)),
        training_seconds_total=nonneg(rng),
        classes=tuple(rng.randrange(256) for _ in range(_length(rng, 256))),
        zoo=maybe(rng, lambda: _zoo(rng)),
        **{f: count(rng) for f in _METRIC_COUNTS},
    )


def _zoo(rng: random.Random) -> ZooMetrics:
    rates = {f: rng.choice((0.0, 1.0, rng.random())) for f in _ZOO_RATES}
    return ZooMetrics(**rates, **{f: count(rng) for f in ZooMetrics.model_fields if f not in rates})


def _gradient(rng: random.Random) -> Message:
    return Gradient(
        width=pixels(rng),
        height=pixels(rng),
        scale=nonneg(rng),
        utility=nonneg(rng),
        timestamp=nonneg(rng),
        **_signature(rng),
    )


BUILDERS: dict[MessageType, Callable[[random.Random], Message]] = {
    MessageType.HELLO: _hello,
    MessageType.SEGMENT: _segment,
    MessageType.TELEMETRY: _telemetry,
    MessageType.RESULTS: _results,
    MessageType.ACK: _ack,
    MessageType.MODEL: _model,
    MessageType.UPDATE: _update,
    MessageType.CONTROL: _control,
    MessageType.METRICS: _metrics,
    MessageType.GRADIENT: _gradient,
}
BODY_TYPES = {MessageType.SEGMENT, MessageType.MODEL, MessageType.UPDATE, MessageType.GRADIENT}


# -- routes: which side receives what, on which topic ---------------------------------------------

DEVICE_SIDE, TRAINER_SIDE = "device", "trainer"


@dataclass(frozen=True)
class Route:
    """Where a message of ``msg_type`` arrives: the receiving side and the topic's device."""

    msg_type: MessageType
    side: str
    device: str  # the device the topic names

    @property
    def direction(self) -> Direction | None:
        if self.msg_type == MessageType.METRICS:
            return None
        return Direction.DOWN if self.side == DEVICE_SIDE else Direction.UP

    @property
    def topic(self) -> str:
        middle = "" if self.direction is None else f"{self.direction.value}/"
        return f"{PREFIX}/{self.device}/{middle}{self.msg_type.value}"

    @property
    def own(self) -> bool:
        """Whether the sender must be the device the topic names (endpoint._check_sender)."""
        return self.direction == Direction.UP

    def sender(self, rng: random.Random) -> str:
        if self.own:
            return self.device
        return rng.choice((TRAINER_ID, device_id(rng)))


def route(rng: random.Random, msg_type: MessageType) -> Route:
    """Metrics are read by observers; the trainer's endpoint is the one that takes topics
    without a direction, so metrics are fed to it (no endpoint of this project subscribes)."""
    sides = {Direction.UP: TRAINER_SIDE, Direction.DOWN: DEVICE_SIDE, None: TRAINER_SIDE}
    side = sides[rng.choice(sorted(ROUTES[msg_type], key=str))]
    return Route(msg_type, side, DEVICE if side == DEVICE_SIDE else device_id(rng))


def types_on(side: str) -> list[MessageType]:
    wanted = Direction.DOWN if side == DEVICE_SIDE else Direction.UP
    return [
        t for t, dirs in ROUTES.items() if wanted in dirs or (side == TRAINER_SIDE and None in dirs)
    ]


# -- envelopes and their bytes -------------------------------------------------------------------


def envelope(
    rng: random.Random, msg: Message, sender: str, payload: bytes = b"", boot: str | None = None
) -> bytes:
    return encode(
        msg,
        device_id=sender,
        seq=rng.randrange(2**63),
        boot=boot or rng.randbytes(8).hex(),
        body=payload,
        sent_at=rng.choice((0.0, 1.7e9 + rng.random(), rng.uniform(0, 1e10))),
    )


def valid(rng: random.Random, r: Route, sender: str | None = None) -> bytes:
    msg = BUILDERS[r.msg_type](rng)
    payload = body(rng) if r.msg_type in BODY_TYPES else b""
    return envelope(rng, msg, sender or r.sender(rng), payload)


def split_envelope(payload: bytes) -> tuple[dict[str, Any], bytes]:
    (header_len,) = struct.unpack_from(">I", payload, 4)
    header = json.loads(payload[PREFIX_SIZE : PREFIX_SIZE + header_len])
    return header, payload[PREFIX_SIZE + header_len :]


def frame(header: bytes, payload: bytes = b"", version: int = 1) -> bytes:
    return b"AMS" + struct.pack(">BI", version, len(header)) + header + payload


def reframe(header: dict[str, Any], payload: bytes, fix_body: bool = False) -> bytes:
    if fix_body:
        header = {**header, "body_len": len(payload), "body_sha256": sha256_hex(payload)}
    return frame(json.dumps(header).encode(), payload)


# -- mutations ------------------------------------------------------------------------------------

INTERESTING: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 0.5, -0.0, 2**31, 2**32, 2**53, 2**53 + 1, 2**63, 2**63 + 1,
    2**64, -(2**63), 10**30, 1e308, 5e-324, float("nan"), float("inf"), float("-inf"), "", "0",
    "a", "0" * 64, "f" * 128, "x" * 5000, "hello", "chunk", "\x00", "é", [], [0], [None], {},
    {"type": "hello"}, "1", "1.0", "true", "null", [1] * 300,
)  # fmt: skip


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict | list):
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            yield from _paths(child, (*path, key))


def _parent(root: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        root = root[key]
    return root


def mutate_json(rng: random.Random, header: dict[str, Any]) -> dict[str, Any]:
    """One structural change somewhere in the header: a value replaced, a key removed, added
    or renamed, an element appended."""
    header = json.loads(json.dumps(header))
    path = rng.choice([p for p in _paths(header) if p])
    parent, key = _parent(header, path), path[-1]
    op = rng.randrange(5)
    if op == 0:
        parent[key] = rng.choice(INTERESTING)
    elif op == 1:
        del parent[key]
    elif op == 2 and isinstance(parent, dict):
        parent[rng.choice(("zz", "type", "Seq", "body_len ", text(rng, 8)))] = parent.pop(key)
    elif op == 3 and isinstance(parent, dict):
        parent[text(rng, 12) or "x"] = rng.choice(INTERESTING)
    elif isinstance(parent[key], list):
        parent[key].append(rng.choice(INTERESTING))
    else:
        parent[key] = rng.choice(INTERESTING)
    return header


_RAW_EDITS: tuple[tuple[bytes, bytes], ...] = (
    (b'"seq": ', b'"seq": 1, "seq": '),  # duplicate key
    (b'"seq": ', b'"seq": 1' + b"0" * 5000 + b', "x": '),  # a number past every limit
    (b'"seq": ', b'"seq": ' + b"[" * 5000 + b"]" * 5000 + b', "x": '),  # deep nesting
    (b'"sent_at": ', b'"sent_at": NaN, "x": '),
    (b'"sent_at": ', b'"sent_at": Infinity, "x": '),
    (b'"sent_at": ', b'"sent_at": 1e999, "x": '),
    (b'"boot": "', b'"boot": "\xff\xfe'),  # invalid UTF-8
    (b'"boot": "', b'"boot": "\\ud800'),  # lone surrogate escape
    (b'"msg": {', b'"msg": {"type": "chunk", '),
    (b"{", b"\xef\xbb\xbf{"),  # byte order mark
    (b"}", b",}"),  # trailing comma
    (b'"device_id": "', b'"device_id": "\\u0000'),
    (b'"type": "', b'"type": "\\u0068'),  # an escaped 'h'
)


def mutate_text(rng: random.Random, header: bytes) -> bytes:
    old, new = rng.choice(_RAW_EDITS)
    if old in header:
        return header.replace(old, new, 1)
    at = rng.randrange(len(header) + 1)
    return header[:at] + rng.choice(new.split(b'"')) + header[at:]


def flip_bits(rng: random.Random, data: bytes, lo: int = 0, hi: int | None = None) -> bytes:
    hi = len(data) if hi is None else hi
    if hi <= lo:
        return data
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, rng.randint(1, 16)))):
        out[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(out)


def splice(rng: random.Random, a: bytes, b: bytes) -> bytes:
    return a[: rng.randint(0, len(a))] + b[rng.randint(0, len(b)) :]


# -- protocol cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One MQTT message and the outcomes it may have."""

    topic: str
    payload: bytes
    allowed: frozenset[str]
    whole: bytes | None = None  # when delivered, the envelope it must be


@dataclass
class Case:
    subject: str
    index: int
    strategy: str
    side: str
    steps: list[Step] = field(default_factory=list)


def _body_len_outcome(msg_type: MessageType, declared: int, present: int) -> frozenset[str]:
    if declared > DEFAULT_LIMITS.body_limit(msg_type):
        return rejected(Reason.OVERSIZE)
    if declared > present:
        return rejected(Reason.TRUNCATED)
    return rejected(Reason.TRAILING_BYTES) if declared < present else frozenset({DELIVERED})


def _s_valid(rng: random.Random, r: Route) -> list[Step]:
    payload = valid(rng, r)
    return [Step(r.topic, payload, frozenset({DELIVERED}), payload)]


def _s_duplicate(rng: random.Random, r: Route) -> list[Step]:
    payload = valid(rng, r)
    again = DUPLICATE if DELIVERY[r.msg_type].dedupe else DELIVERED
    return [
        Step(r.topic, payload, frozenset({DELIVERED}), payload),
        Step(r.topic, payload, frozenset({again}), payload),
    ]


def _s_random_bytes(rng: random.Random, r: Route) -> list[Step]:
    return [Step(r.topic, rng.randbytes(_length(rng, 2048)), REJECTED)]


def _s_prefix_then_garbage(rng: random.Random, r: Route) -> list[Step]:
    garbage = rng.randbytes(_length(rng, 2048))
    return [
        Step(r.topic, frame(garbage[: len(garbage) // 2], garbage[len(garbage) // 2 :]), REJECTED)
    ]


def _s_bit_flips(rng: random.Random, r: Route) -> list[Step]:
    payload = valid(rng, r)
    (header_len,) = struct.unpack_from(">I", payload, 4)
    hi = rng.choice((len(payload), PREFIX_SIZE, PREFIX_SIZE + header_len))  # all, prefix, header
    return [Step(r.topic, flip_bits(rng, payload, 0, hi), ANY)]


def _s_truncated(rng: random.Random, r: Route) -> list[Step]:
    payload = valid(rng, r)
    return [Step(r.topic, payload[: rng.randrange(len(payload))], rejected(Reason.TRUNCATED))]


def _s_extended(rng: random.Random, r: Route) -> list[Step]:
    payload = valid(rng, r) + rng.randbytes(rng.choice((1, rng.randint(1, 4096))))
    return [Step(r.topic, payload, rejected(Reason.TRAILING_BYTES))]


def _s_bad_magic(rng: random.Random, r: Route) -> list[Step]:
    magic = rng.choice((b"AMT", b"ams", b"\x00\x00\x00", rng.randbytes(3)))
    magic = b"SMA" if magic == b"AMS" else magic
    return [Step(r.topic, magic + valid(rng, r)[3:], rejected(Reason.BAD_MAGIC))]


def _s_bad_version(rng: random.Random, r: Route) -> list[Step]:
    payload = valid(rng, r)
    wrong = rng.choice((0, 2, 255, rng.randint(2, 255)))
    return [
        Step(
            r.topic,
            payload[:3] + bytes([wrong]) + payload[4:],
            rejected(Reason.UNSUPPORTED_VERSION),
        )
    ]


def _s_header_len(rng: random.Random, r: Route) -> list[Step]:
    payload = valid(rng, r)
    (actual,) = struct.unpack_from(">I", payload, 4)
    limit = DEFAULT_LIMITS.header_bytes
    lie = rng.choice(
        (0, 1, actual - 1, actual + 1, limit, limit + 1, 2**32 - 1, rng.randrange(2**32))
    )
    lie = actual + 2 if lie == actual else lie
    return [Step(r.topic, payload[:4] + struct.pack(">I", lie) + payload[8:], REJECTED)]


def _s_json_field(rng: random.Random, r: Route) -> list[Step]:
    header, payload = split_envelope(valid(rng, r))
    return [Step(r.topic, reframe(mutate_json(rng, header), payload), ANY)]


def _s_json_text(rng: random.Random, r: Route) -> list[Step]:
    header, payload = split_envelope(valid(rng, r))
    return [Step(r.topic, frame(mutate_text(rng, json.dumps(header).encode()), payload), ANY)]


def _s_other_type_in_header(rng: random.Random, r: Route) -> list[Step]:
    header, payload = split_envelope(valid(rng, r))
    other = rng.choice([t for t in MessageType if t != r.msg_type])
    header["msg"] = {**header["msg"], "type": other.value}
    return [Step(r.topic, reframe(header, payload), ANY)]


def _s_garbage_body(rng: random.Random, r: Route) -> list[Step]:
    header, _ = split_envelope(valid(rng, r))
    payload = body(rng, rng.choice((16, 8192)))
    ok = len(payload) <= DEFAULT_LIMITS.body_limit(r.msg_type)
    allowed = frozenset({DELIVERED}) if ok else rejected(Reason.OVERSIZE)
    encoded = reframe(header, payload, fix_body=True)
    return [Step(r.topic, encoded, allowed, encoded)]


def _s_body_len(rng: random.Random, r: Route) -> list[Step]:
    header, payload = split_envelope(valid(rng, r))
    limit = DEFAULT_LIMITS.body_limit(r.msg_type)
    n = len(payload)
    declared = rng.choice((0, n + 1, n - 1, limit, limit + 1, 2**31, 2**40, 2**63, 2**64 + 1))
    declared = n + 1 if declared in (n, -1) else declared
    header["body_len"] = declared
    return [Step(r.topic, reframe(header, payload), _body_len_outcome(r.msg_type, declared, n))]


def _s_body_hash(rng: random.Random, r: Route) -> list[Step]:
    header, payload = split_envelope(valid(rng, r))
    header["body_sha256"] = sha(rng)
    return [Step(r.topic, reframe(header, payload), rejected(Reason.BAD_HASH))]


def _s_padded_header(rng: random.Random, r: Route) -> list[Step]:
    header, payload = split_envelope(valid(rng, r))
    raw = json.dumps(header).encode()
    limit = DEFAULT_LIMITS.header_bytes
    size = rng.choice((len(raw) + 1, limit, limit + 1, limit + rng.randint(1, 4096)))
    encoded = frame(raw + b" " * max(0, size - len(raw)), payload)
    allowed = frozenset({DELIVERED}) if size <= limit else rejected(Reason.OVERSIZE)
    return [Step(r.topic, encoded, allowed, encoded)]


def _s_wrong_topic_type(rng: random.Random, r: Route) -> list[Step]:
    other = rng.choice([t for t in types_on(r.side) if t != r.msg_type])
    topic = Route(other, r.side, r.device).topic  # sent by that device: only the type is wrong
    return [Step(topic, valid(rng, r, r.device), rejected(Reason.WRONG_TYPE))]


def _s_wrong_sender(rng: random.Random, r: Route) -> list[Step]:
    msg = BUILDERS[r.msg_type](rng)
    sender = rng.choice((device_id(rng), stranger(r.device)))
    sender = stranger(r.device) if sender == r.device else sender
    payload = envelope(rng, msg, sender, body(rng) if r.msg_type in BODY_TYPES else b"")
    allowed = rejected(Reason.WRONG_DEVICE) if r.own else frozenset({DELIVERED})
    return [Step(r.topic, payload, allowed, payload)]


_BAD_IDS = ("", "-a", "_a", ".", "a" * 65, "a b", "ü", "$SYS", "a\tb", "é" * 3)
_BAD_NAMES = ("", "HELLO", "hello ", "héllo", "up", "down", "x/y", "chunk", "status", "metrics")


def _s_bad_topic(rng: random.Random, r: Route) -> list[Step]:
    """Topics the side's subscriptions match that name no route (a device only ever gets its
    own down/#, so there only the levels below it vary)."""
    level = Direction.DOWN if r.side == DEVICE_SIDE else Direction.UP
    wrong = [t.value for t in MessageType if level not in ROUTES.get(t, ())]
    bad_name = rng.choice(_BAD_NAMES + tuple(wrong))
    options = [
        f"{PREFIX}/{r.device}/{level.value}/{bad_name}",
        f"{PREFIX}/{r.device}/{level.value}",
        f"{PREFIX}/{r.device}/{level.value}/{r.msg_type.value}/x",
    ]
    if r.side == TRAINER_SIDE:
        bad_id = rng.choice(_BAD_IDS)
        options += [f"{PREFIX}/{bad_id}/up/{r.msg_type.value}", f"{PREFIX}/{bad_id}/status"]
    return [Step(rng.choice(options), valid(rng, r), rejected(Reason.BAD_TOPIC))]


def _s_splice(rng: random.Random, r: Route) -> list[Step]:
    return [Step(r.topic, splice(rng, valid(rng, r), valid(rng, r)), ANY)]


MESSAGE_STRATEGIES: dict[str, Callable[[random.Random, Route], list[Step]]] = {
    "valid": _s_valid,
    "duplicate": _s_duplicate,
    "random_bytes": _s_random_bytes,
    "prefix_then_garbage": _s_prefix_then_garbage,
    "bit_flips": _s_bit_flips,
    "truncated": _s_truncated,
    "extended": _s_extended,
    "bad_magic": _s_bad_magic,
    "bad_version": _s_bad_version,
    "header_len": _s_header_len,
    "json_field": _s_json_field,
    "json_text": _s_json_text,
    "other_type_in_header": _s_other_type_in_header,
    "garbage_body": _s_garbage_body,
    "body_len": _s_body_len,
    "body_hash": _s_body_hash,
    "padded_header": _s_padded_header,
    "wrong_topic_type": _s_wrong_topic_type,
    "wrong_sender": _s_wrong_sender,
    "bad_topic": _s_bad_topic,
    "splice": _s_splice,
}
# json mutations reach the most code: they get a larger share
MESSAGE_WEIGHTS = {name: 1 for name in MESSAGE_STRATEGIES} | {
    "json_field": 6,
    "json_text": 2,
    "bit_flips": 3,
}


# -- chunk cases ----------------------------------------------------------------------------------


@dataclass
class Chunked:
    """A whole envelope cut into chunk envelopes (bytes), as one sender sends them."""

    whole: bytes
    parts: list[bytes]
    fields: dict[str, Any]


def cut(
    rng: random.Random, r: Route, whole: bytes, sender: str | None = None, **override: Any
) -> Chunked:
    n = rng.choice((2, 2, 3, rng.randint(2, 8)))
    points = sorted(rng.randint(0, len(whole)) for _ in range(n - 1))
    slices = [whole[a:b] for a, b in zip([0, *points], [*points, len(whole)], strict=True)]
    total_sha = sha256_hex(whole)
    fields = {
        "inner_type": r.msg_type,
        "msg_id": rng.choice((total_sha[:32], rng.randbytes(rng.randint(1, 20)).hex())),
        "count": n,
        "total_len": len(whole),
        "total_sha256": total_sha,
    } | override
    boot, sender = rng.randbytes(8).hex(), sender or r.sender(rng)
    parts = [
        envelope(rng, Chunk(index=i, **fields), sender, piece, boot)
        for i, piece in enumerate(slices)
    ]
    return Chunked(whole, parts, fields)


def _in_order(r: Route, chunked: Chunked, last: frozenset[str] | None = None) -> list[Step]:
    steps = [Step(r.topic, p, frozenset({PENDING})) for p in chunked.parts]
    final = frozenset({DELIVERED}) if last is None else last
    steps[-1] = Step(r.topic, chunked.parts[-1], final, chunked.whole)
    return steps


def _c_valid(rng: random.Random, r: Route) -> list[Step]:
    chunked = cut(rng, r, valid(rng, r))
    rng.shuffle(chunked.parts)
    return _in_order(r, chunked)


def _c_redelivered(rng: random.Random, r: Route) -> list[Step]:
    chunked = cut(rng, r, valid(rng, r))
    steps = _in_order(r, chunked)
    at = rng.randrange(len(steps))
    return [
        *steps[: at + 1],
        Step(r.topic, steps[at].payload, frozenset({DUPLICATE})),
        *steps[at + 1 :],
    ]


def _c_resent(rng: random.Random, r: Route) -> list[Step]:
    """A chunk sent again under a new sequence number: the reassembler keeps the first."""
    chunked = cut(rng, r, valid(rng, r))
    header, payload = split_envelope(chunked.parts[0])
    header["seq"] = rng.randrange(2**63)
    steps = _in_order(r, chunked)
    return [steps[0], Step(r.topic, reframe(header, payload), frozenset({PENDING})), *steps[1:]]


def _c_missing(rng: random.Random, r: Route) -> list[Step]:
    chunked = cut(rng, r, valid(rng, r))
    del chunked.parts[rng.randrange(len(chunked.parts))]
    return [Step(r.topic, p, frozenset({PENDING})) for p in chunked.parts]


def _c_disagreeing(rng: random.Random, r: Route) -> list[Step]:
    whole = valid(rng, r)
    chunked = cut(rng, r, whole)
    at = rng.randrange(1, len(chunked.parts))
    field_name = rng.choice(("count", "total_len", "total_sha256"))
    lie = {"count": chunked.fields["count"] + rng.randint(1, 9), "total_sha256": sha(rng)}
    lie["total_len"] = rng.choice((1, len(whole) + 1, max(1, len(whole) - 1), 100_000))
    if lie["total_len"] == len(whole):
        lie["total_len"] += 1
    fields = chunked.fields | {field_name: lie[field_name]}
    header, payload = split_envelope(chunked.parts[at])
    header["msg"] = json.loads(Chunk(index=at, **fields).model_dump_json())
    steps = [Step(r.topic, p, frozenset({PENDING})) for p in chunked.parts]
    steps[at] = Step(r.topic, reframe(header, payload), rejected(Reason.BAD_CHUNK))
    return steps


def _c_lengths(rng: random.Random, r: Route) -> list[Step]:
    """Every chunk agrees, on a total length or hash the reassembled bytes do not have."""
    whole = valid(rng, r)
    limit = PREFIX_SIZE + DEFAULT_LIMITS.header_bytes + DEFAULT_LIMITS.body_limit(r.msg_type)
    lie = rng.choice(("short", "long", "sha", "oversize"))
    override = {
        "short": {"total_len": rng.randint(1, max(1, len(whole) - 1))},
        "long": {"total_len": rng.randint(len(whole) + 1, len(whole) + 9999)},
        "sha": {"total_sha256": sha(rng)},
        "oversize": {"total_len": rng.choice((limit + 1, MAX_MQTT_PAYLOAD * 64))},
    }[lie]
    chunked = cut(rng, r, whole, **override)
    if lie == "oversize":
        return [Step(r.topic, p, rejected(Reason.OVERSIZE)) for p in chunked.parts]
    if lie == "short" and override["total_len"] < len(whole):
        allowed = frozenset({PENDING}) | rejected(Reason.BAD_CHUNK)
        return [Step(r.topic, p, allowed) for p in chunked.parts]
    return _in_order(r, chunked, rejected(Reason.BAD_CHUNK))


_BAD_CHUNK_FIELDS: tuple[tuple[str, Any], ...] = (
    ("index", -1), ("index", "count"), ("count", 1), ("count", 0), ("count", 65537),
    ("inner_type", "chunk"), ("inner_type", "bogus"), ("msg_id", ""), ("msg_id", "G"),
    ("msg_id", "a" * 41), ("total_len", 0), ("total_len", MAX_MQTT_PAYLOAD * 64 + 1),
    ("total_sha256", "ab"), ("index", 1.0), ("count", "2"), ("index", None),
)  # fmt: skip


def _c_bad_fields(rng: random.Random, r: Route) -> list[Step]:
    chunked = cut(rng, r, valid(rng, r))
    header, payload = split_envelope(chunked.parts[0])
    key, value = rng.choice(_BAD_CHUNK_FIELDS)
    header["msg"][key] = header["msg"]["count"] if value == "count" else value
    return [Step(r.topic, reframe(header, payload), rejected(Reason.BAD_HEADER))]


def _c_wrong_inner_type(rng: random.Random, r: Route) -> list[Step]:
    other = rng.choice([t for t in BUILDERS if t != r.msg_type])
    chunked = cut(rng, r, valid(rng, r), inner_type=other)
    return [Step(r.topic, p, rejected(Reason.WRONG_TYPE)) for p in chunked.parts]


def _c_inner_garbage(rng: random.Random, r: Route) -> list[Step]:
    """The reassembled bytes are noise, a damaged envelope, or one of another schema version
    (a rare bit flip's outcome, made certain)."""
    inner = valid(rng, r)
    wrong_version = inner[:3] + bytes([rng.randint(2, 255)]) + inner[4:]
    whole = rng.choice((rng.randbytes(rng.randint(1, 4000)), flip_bits(rng, inner), wrong_version))
    return _in_order(r, cut(rng, r, whole), REJECTED | {DELIVERED})


def _c_inner_other(rng: random.Random, r: Route) -> list[Step]:
    """The reassembled envelope is of another type, from another device, or itself a chunk."""
    kind = rng.choice(("type", "device", "nested"))
    if kind == "type":
        other = Route(
            rng.choice([t for t in types_on(r.side) if t != r.msg_type]), r.side, r.device
        )
        inner = valid(rng, other, r.device)
        return _in_order(r, cut(rng, r, inner), rejected(Reason.WRONG_TYPE))
    if kind == "device":
        foreign = Route(r.msg_type, r.side, stranger(r.device))
        allowed = rejected(Reason.WRONG_DEVICE) if r.own else frozenset({DELIVERED})
        return _in_order(r, cut(rng, r, valid(rng, foreign)), allowed)
    inner = cut(rng, r, valid(rng, r)).parts[0]
    return _in_order(r, cut(rng, r, inner), rejected(Reason.WRONG_TYPE))


def _c_wrong_sender(rng: random.Random, r: Route) -> list[Step]:
    chunked = cut(rng, r, valid(rng, r), sender=stranger(r.device))
    if r.own:
        return [Step(r.topic, p, rejected(Reason.WRONG_DEVICE)) for p in chunked.parts]
    return _in_order(r, chunked)


def _c_mutated(rng: random.Random, r: Route) -> list[Step]:
    chunked = cut(rng, r, valid(rng, r))
    at = rng.randrange(len(chunked.parts))
    part = chunked.parts[at]
    mutated = rng.choice(
        (
            flip_bits(rng, part),
            part[: rng.randrange(len(part))],
            part + rng.randbytes(rng.randint(1, 64)),
            reframe(mutate_json(rng, split_envelope(part)[0]), split_envelope(part)[1]),
        )
    )
    anything = ANY | {PENDING}
    steps = [Step(r.topic, p, anything, chunked.whole) for p in chunked.parts]
    steps[at] = Step(r.topic, mutated, anything, chunked.whole)
    return steps


def _c_flood(rng: random.Random, r: Route) -> list[Step]:
    """More partial messages than the reassembler keeps, then the rest of each."""
    messages = [cut(rng, r, valid(rng, r)) for _ in range(rng.randint(2, 24))]
    maybe_done = frozenset({PENDING, DELIVERED})
    first = [Step(r.topic, m.parts[0], frozenset({PENDING})) for m in messages]
    rest = [Step(r.topic, p, maybe_done, m.whole) for m in messages for p in m.parts[1:]]
    return first + rest


def _c_collision(rng: random.Random, r: Route) -> list[Step]:
    """Two messages under one msg_id: the first owns it, the other's chunks disagree."""
    a = cut(rng, r, valid(rng, r), sender=None)
    sender = split_envelope(a.parts[0])[0]["device_id"]
    b = cut(rng, r, valid(rng, r), sender=sender, msg_id=a.fields["msg_id"])
    steps = [Step(r.topic, a.parts[0], frozenset({PENDING}))]
    steps.append(Step(r.topic, b.parts[0], rejected(Reason.BAD_CHUNK)))
    steps += _in_order(r, Chunked(a.whole, a.parts[1:], a.fields))
    return steps + [Step(r.topic, p, frozenset({PENDING})) for p in b.parts[1:]]


def _c_random_fields(rng: random.Random, r: Route) -> list[Step]:
    n = rng.choice((2, 65536, rng.randint(2, 65536)))
    limit = PREFIX_SIZE + DEFAULT_LIMITS.header_bytes + DEFAULT_LIMITS.body_limit(r.msg_type)
    fields = {
        "inner_type": rng.choice((r.msg_type, r.msg_type, rng.choice(list(BUILDERS)))),
        "msg_id": rng.randbytes(1).hex()[: rng.randint(1, 2)],
        "count": n,
        "total_len": rng.choice((1, rng.randint(1, 5000), limit, limit + 1)),
        "total_sha256": sha(rng),
    }
    sender, boot = r.sender(rng), rng.randbytes(8).hex()
    payloads = [
        envelope(rng, Chunk(index=rng.randrange(n), **fields), sender, body(rng, 64), boot)
        for _ in range(rng.randint(1, 4))
    ]
    return [Step(r.topic, p, REJECTED | {PENDING}) for p in payloads]


CHUNK_STRATEGIES: dict[str, Callable[[random.Random, Route], list[Step]]] = {
    "valid": _c_valid,
    "redelivered": _c_redelivered,
    "resent": _c_resent,
    "missing": _c_missing,
    "disagreeing": _c_disagreeing,
    "lengths": _c_lengths,
    "bad_fields": _c_bad_fields,
    "wrong_inner_type": _c_wrong_inner_type,
    "inner_garbage": _c_inner_garbage,
    "inner_other": _c_inner_other,
    "wrong_sender": _c_wrong_sender,
    "mutated": _c_mutated,
    "flood": _c_flood,
    "collision": _c_collision,
    "random_fields": _c_random_fields,
}


def protocol_case(seed: int, msg_type: MessageType, index: int) -> Case:
    rng = case_rng(seed, msg_type.value, index)
    if msg_type == MessageType.CHUNK:
        strategies, weights = CHUNK_STRATEGIES, {n: 1 for n in CHUNK_STRATEGIES}
        r = route(rng, rng.choice(list(BUILDERS)))
    else:
        strategies, weights, r = MESSAGE_STRATEGIES, MESSAGE_WEIGHTS, route(rng, msg_type)
    names = list(strategies)
    strategy = rng.choices(names, weights=[weights[n] for n in names])[0]
    return Case(msg_type.value, index, strategy, r.side, strategies[strategy](rng, r))


# -- the receiving side ---------------------------------------------------------------------------


class Receiver:
    """One endpoint of each side, never connected: payloads go in where the MQTT link's
    dispatcher hands them over (the endpoint's subscription handler, ``receive``)."""

    def __init__(self) -> None:
        config = BrokerConfig(prefix=PREFIX)
        self.endpoints: dict[str, Endpoint] = {
            DEVICE_SIDE: DeviceEndpoint(config, DEVICE),
            TRAINER_SIDE: TrainerEndpoint(config),
        }
        self._delivered: list[tuple[Envelope, Any]] = []
        for endpoint in self.endpoints.values():
            for msg_type in MessageType:
                endpoint.on(msg_type, lambda env, topic: self._delivered.append((env, topic)))

    def feed(self, side: str, topic: str, payload: bytes) -> tuple[str, list[tuple[Envelope, Any]]]:
        """The outcome's label and what reached the handlers. Raises what escapes."""
        endpoint = self.endpoints[side]
        before = endpoint.counters.snapshot()
        self._delivered = []
        endpoint.receive(Inbound(topic, payload, 1, False, False, 1, 0))
        after = endpoint.counters.snapshot()
        moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        moved.pop("bytes_in", None)
        return label(moved), self._delivered


def label(moved: dict[str, int]) -> str:
    """One payload's outcome from the counters it moved: exactly one must move, by one (or
    none, for a chunk held for reassembly)."""
    if not moved:
        return PENDING
    (name, n), *others = moved.items()
    if others or n != 1:
        return f"unexpected counters {moved}"
    if name.startswith("received."):
        return DELIVERED
    if name == "duplicates":
        return DUPLICATE
    return name if name in REJECTED else f"unexpected counters {moved}"


def invalid_delivery(side: str, step: Step, env: Envelope, topic: Any) -> str | None:
    """Why a delivered message is not one a handler may see, or None."""
    accepted = {Direction.DOWN} if side == DEVICE_SIDE else {Direction.UP, None}
    own = topic.direction == Direction.UP
    problems = {
        "topic differs from the MQTT topic": str(topic) != step.topic,
        "type differs from the topic's": env.type != topic.type,
        "direction not received by this side": topic.direction not in accepted,
        "type does not travel there": topic.direction not in ROUTES.get(env.type, ()),
        "body length or hash wrong": len(env.body) != env.header.body_len
        or sha256_hex(env.body) != env.header.body_sha256,
        "body over its limit": len(env.body) > DEFAULT_LIMITS.body_limit(env.type),
        "sent by another device": own and env.device_id != topic.device_id,
        "not the envelope sent": step.whole is not None and env != decode(step.whole),
    }
    problem = next((p for p, bad in problems.items() if bad), None)
    if problem is None:
        header = env.header
        again = encode(
            header.msg,
            device_id=header.device_id,
            seq=header.seq,
            boot=header.boot,
            body=env.body,
            sent_at=header.sent_at,
        )
        problem = None if decode(again) == env else "does not survive a re-encode"
    return problem


@dataclass
class Report:
    """What one subject's fuzz did, JSON-ready."""

    subject: str
    cases: int = 0
    payloads: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    strategies: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    failure_count: int = 0
    seconds: float = 0.0
    rss_growth: int = 0  # growth of this process's peak RSS during this subject
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, **details: Any) -> None:
        self.failure_count += 1
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(details)

    def as_dict(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in self.__dict__.items()}


def _recipe(case: Case, number: int, step: Step, seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "subject": case.subject,
        "index": case.index,
        "strategy": case.strategy,
        "side": case.side,
        "step": number,
        "topic": step.topic,
        "payload_hex": step.payload[:4096].hex(),
        "payload_len": len(step.payload),
        "allowed": sorted(step.allowed),
    }


def judge(side: str, step: Step, outcome: str, delivered: list[tuple[Envelope, Any]]) -> str | None:
    """What is wrong with a payload's fate, or None."""
    if outcome not in step.allowed:
        return f"outcome {outcome}"
    if len(delivered) != (outcome == DELIVERED):
        return f"{len(delivered)} messages reached a handler, outcome {outcome}"
    return invalid_delivery(side, step, *delivered[0]) if delivered else None


def run_case(receiver: Receiver, case: Case, report: Report, seed: int) -> None:
    for number, step in enumerate(case.steps):
        report.payloads += 1
        try:
            outcome, delivered = receiver.feed(case.side, step.topic, step.payload)
            problem = judge(case.side, step, outcome, delivered)
        except Exception:
            outcome, problem = "exception", traceback.format_exc()
        report.outcomes[outcome] += 1
        if problem is not None:
            report.fail(problem=problem, **_recipe(case, number, step, seed))


def fuzz_protocol(msg_type: MessageType, payloads: int, seed: int) -> Report:
    """Cases for one message type until ``payloads`` MQTT messages were fed."""
    report, receiver = Report(msg_type.value), Receiver()
    started = time.perf_counter()
    while report.payloads < payloads:
        case = protocol_case(seed, msg_type, report.cases)
        report.cases += 1
        report.strategies[case.strategy] += 1
        run_case(receiver, case, report, seed)
    report.seconds = time.perf_counter() - started
    return report


# -- update bodies through ModelSlots -------------------------------------------------------------

STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
VIDEO = "videos/vtest.avi"
ENGINE = LiteRtConfig(backend="litert", input_size=(513, 513), threads=2)
UPDATE_TOPIC = f"{PREFIX}/{DEVICE}/down/update"
CONTROL_TOPIC = f"{PREFIX}/{DEVICE}/down/control"
BOOT = "f" * 16
BATCH = 32  # cases submitted before waiting for their acks
SIGNED_REASONS = frozenset({AckReason.BAD_PAYLOAD, AckReason.BAD_HASH})
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def perturbed(model: TFLiteFile, seed: int, fraction: float) -> dict[int, np.ndarray]:
    """New values for the uint8 weights: a few moved one quantization step (labels stay sane)."""
    rng = np.random.default_rng(seed)
    new = {}
    for tensor in model.trainable:
        if tensor.dtype == np.uint8:
            values = model.values(tensor).copy()
            picked = rng.random(tensor.size) < fraction
            values[picked] = np.clip(values[picked].astype(int) + 1, 0, 255)
            new[tensor.index] = values
    return new


def _fp16_selection(model: TFLiteFile, new: dict[int, np.ndarray]) -> dict[int, tuple]:
    selected = {}
    for index, values in new.items():
        tensor = model.by_index[index]
        positions = np.flatnonzero(values != model.values(tensor))
        channel = tensor._channel_of(positions)
        zero = tensor.zero_point[channel]
        real = (values[positions].astype(np.int64) - zero) * tensor.scale[channel].astype(float)
        selected[index] = (positions, real)
    return selected


@dataclass
class Versions:
    """The trainer's side: v0 (the student), v1 (what the device runs while fuzzed) and, in
    every format, the genuine update from v1 to v2."""

    v0: bytes
    v1: bytes
    v2: bytes
    to_v1: bytes  # qdelta v0 -> v1
    bodies: dict[UpdateFormat, bytes]
    qdelta_raw: bytes  # the genuine qdelta body before zstd
    trainable_size: int

    @functools.cached_property
    def v1_sha256(self) -> str:
        return sha256_hex(self.v1)

    @functools.cached_property
    def v2_sha256(self) -> str:
        return sha256_hex(self.v2)

    def zpatch_fast(self, new: bytes) -> bytes:
        """``new`` as zpatch would send it, at a level that takes milliseconds, not seconds."""
        params = zstandard.ZstdCompressionParameters.from_level(1, window_log=23)
        raw = zstandard.ZstdCompressionDict(self.v1, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return zstandard.ZstdCompressor(dict_data=raw, compression_params=params).compress(new)

    @classmethod
    def make(cls, student: bytes) -> Versions:
        m0 = TFLiteFile(student)
        step1 = perturbed(m0, 1, 0.001)
        v1 = m0.patched(step1)
        m1 = TFLiteFile(v1)
        step2 = perturbed(m1, 2, 0.002)
        v2 = m1.patched(step2)
        bodies = {
            UpdateFormat.QDELTA: qdelta.encode(m1, step2),
            UpdateFormat.AMS_FP16: ams_fp16.encode(m1, _fp16_selection(m1, step2)),
            UpdateFormat.ZPATCH: zpatch.encode(v1, v2),
        }
        for fmt, made in bodies.items():  # the fixture itself must be right
            assert apply_update(fmt, v1, made) == v2, fmt
        raw = zstandard.ZstdDecompressor().decompress(bodies[UpdateFormat.QDELTA])
        return cls(student, v1, v2, qdelta.encode(m0, step1), bodies, raw, m1.trainable_size)


# corrupt bodies: each takes (rng, versions, the format's genuine body)

Mutator = Callable[[random.Random, Versions, bytes], bytes]


def _m_bit_flips(rng: random.Random, v: Versions, b: bytes) -> bytes:
    return flip_bits(rng, b)


def _m_bytes_set(rng: random.Random, v: Versions, b: bytes) -> bytes:
    out = bytearray(b)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.choice((0, 0xFF, 0x80, 0x7F, rng.randrange(256)))
    return bytes(out)


def _m_truncated(rng: random.Random, v: Versions, b: bytes) -> bytes:
    return b[: rng.choice((0, 1, 4, len(b) - 1, rng.randrange(len(b))))]


def _m_extended(rng: random.Random, v: Versions, b: bytes) -> bytes:
    tail = rng.choice((b"\x00", rng.randbytes(rng.randint(1, 4096)), b, _ZSTD_MAGIC, bytes(64)))
    return b + tail


def _m_inserted(rng: random.Random, v: Versions, b: bytes) -> bytes:
    at = rng.randrange(len(b) + 1)
    return b[:at] + rng.randbytes(rng.randint(1, 64)) + b[at:]


def _m_deleted(rng: random.Random, v: Versions, b: bytes) -> bytes:
    at = rng.randrange(len(b))
    return b[:at] + b[at + rng.randint(1, 64) :]


def _m_random(rng: random.Random, v: Versions, b: bytes) -> bytes:
    head = rng.choice((b"", b[:4], b[:8], _ZSTD_MAGIC, ams_fp16.MAGIC))
    return head + rng.randbytes(rng.choice((0, 1, 16, rng.randint(0, 2 * len(b)))))


def _m_other_format(rng: random.Random, v: Versions, b: bytes) -> bytes:
    other = rng.choice([body for body in v.bodies.values() if body != b] + [v.to_v1])
    return rng.choice((other, splice(rng, b, other), splice(rng, other, b)))


def zstd_blocks(frame_bytes: bytes) -> bytes:
    """What follows a zstd frame header (the blocks, and the checksum if any)."""
    fhd = frame_bytes[4]
    single = fhd >> 5 & 1
    dict_id = (0, 1, 2, 4)[fhd & 3]
    size_field = (single, 2, 4, 8)[fhd >> 6]
    return frame_bytes[5 + (1 - single) + dict_id + size_field :]


def zstd_header(size: int | None, window_log: int, checksum: bool, dict_id: bytes = b"") -> bytes:
    """A frame header with a window descriptor, declaring ``size`` (None: no size)."""
    id_flag = {0: 0, 1: 1, 2: 2, 4: 3}[len(dict_id)]
    fhd = (0 if size is None else 3 << 6) | checksum << 2 | id_flag
    declared = b"" if size is None else struct.pack("<Q", size)
    return _ZSTD_MAGIC + bytes([fhd, (window_log - 10) << 3]) + dict_id + declared


def _m_declared_size(rng: random.Random, v: Versions, b: bytes) -> bytes:
    actual = zstandard.get_frame_parameters(b).content_size
    cap = 64 + 13 * v.trainable_size
    size = rng.choice(
        (0, 1, actual - 1, actual + 1, 2 * actual, cap, cap + 1, 2**32, 2**63, 2**64 - 1, None)
    )
    checksum = bool(b[4] >> 2 & 1) if rng.random() < 0.8 else not b[4] >> 2 & 1
    window = rng.choice((10, 17, 20, 24, 27, 31, 41))
    dict_id = rng.choice((b"", b"", rng.randbytes(1), rng.randbytes(4)))
    return zstd_header(size, window, checksum, dict_id) + zstd_blocks(b)


def _m_frame_flags(rng: random.Random, v: Versions, b: bytes) -> bytes:
    out = bytearray(b)
    # checksum flag, reserved bit, single segment, size and dictionary id fields; not bit 4,
    # which decoders ignore (the frame would still be well-formed)
    out[4] ^= 1 << rng.choice((0, 1, 2, 3, 5, 6, 7))
    return bytes(out)


def _m_blocks(rng: random.Random, v: Versions, b: bytes) -> bytes:
    """RLE and raw blocks that make more, or claim more, than the frame declares."""
    declared = rng.choice((1000, 64 + 13 * v.trainable_size, 2**20))
    blocks = b""
    for i in range(rng.choice((1, 2, 8, 200))):
        kind, size = rng.choice((1, 1, 0, 3)), rng.choice((128 * 1024, 1, rng.randrange(2**21)))
        blocks += struct.pack("<I", (i == 199) | kind << 1 | size << 3)[:3]
        blocks += b"\x00" if kind == 1 else rng.randbytes(rng.choice((0, 16, 1000)))
    return zstd_header(declared, 27, False) + blocks


def _m_skippable(rng: random.Random, v: Versions, b: bytes) -> bytes:
    skipped = rng.randbytes(rng.choice((0, 8, 100)))
    frame_bytes = (
        bytes([0x50 + rng.randrange(16)]) + b"\x2a\x4d\x18" + struct.pack("<I", len(skipped))
    )
    return rng.choice((frame_bytes + skipped + b, frame_bytes + skipped, b + frame_bytes + skipped))


_INTERESTING_U32 = (0, 1, 2, 0xFF, 0xFFFF, 2**31, 2**32 - 1, 110, 109, 688_357)


def _m_qdelta_content(rng: random.Random, v: Versions, b: bytes) -> bytes:
    """A well-formed zstd frame around a corrupted qdelta payload: reaches the table parser."""
    raw = bytearray(v.qdelta_raw)
    (n,) = struct.unpack_from("<I", raw, 3)
    op = rng.randrange(4)
    if op == 0:  # a number of the table
        at = 3 + 4 * rng.randrange(1 + 2 * n)
        value = rng.choice((*_INTERESTING_U32, struct.unpack_from("<I", raw, at)[0] + 1))
        struct.pack_into("<I", raw, at, value % 2**32)
    elif op == 1:  # gaps and differences
        raw = bytearray(flip_bits(rng, bytes(raw), 7 + 8 * n))
    elif op == 2:
        raw = raw[: rng.randrange(len(raw))] if rng.random() < 0.5 else raw + rng.randbytes(9)
    else:
        raw = bytearray(flip_bits(rng, bytes(raw), 0, 7 + 8 * n))
    return zstandard.ZstdCompressor(level=1).compress(bytes(raw))


def _m_zpatch_content(rng: random.Random, v: Versions, b: bytes) -> bytes:
    """Well-formed frames, with the base as dictionary, of files other than v2."""
    other = rng.choice(
        (
            flip_bits(rng, v.v2),
            v.v2[:-1],
            v.v2 + b"\x00",
            bytes(2 * len(v.v1) + (1 << 20) + 1),  # more than zpatch lets a file grow
            b"",
        )
    )
    return v.zpatch_fast(other)


def _ams_parts(b: bytes) -> tuple[bytes, bytes]:
    (length,) = struct.unpack_from("<I", b, 3)
    return b[7 : 7 + length], b[7 + length :]


def _ams(mask_gz: bytes, values: bytes, length: int | None = None) -> bytes:
    length = len(mask_gz) if length is None else length
    return ams_fp16.MAGIC + struct.pack("<I", length % 2**32) + mask_gz + values


def _m_ams_length(rng: random.Random, v: Versions, b: bytes) -> bytes:
    mask_gz, values = _ams_parts(b)
    lie = rng.choice((0, 1, len(mask_gz) - 1, len(mask_gz) + 1, len(b), 2**32 - 1))
    return _ams(mask_gz, values, lie)


def _m_ams_mask(rng: random.Random, v: Versions, b: bytes) -> bytes:
    """Masks that inflate to the wrong size, set bits past the model, are cut or damaged."""
    mask_gz, values = _ams_parts(b)
    mask = gzip.decompress(mask_gz)
    op = rng.randrange(6)
    if op == 0:
        mask = mask[: -rng.randint(1, 9)] if rng.random() < 0.5 else mask + bytes(rng.randint(1, 9))
    elif op == 1:
        mask = mask[:-1] + bytes([mask[-1] | 0x80])  # a bit beyond the model's values
    elif op == 2:
        mask = b"\xff" * len(mask)  # every value selected: far more than the body holds
    elif op == 3:
        return _ams(mask_gz[: rng.randrange(len(mask_gz))], values)
    elif op == 4:
        return _ams(flip_bits(rng, mask_gz), values)
    else:
        return _ams(mask_gz[:-8] + flip_bits(rng, mask_gz[-8:]), values)  # crc32, size
    return _ams(gzip.compress(mask, compresslevel=1, mtime=0), values)


def _m_ams_values(rng: random.Random, v: Versions, b: bytes) -> bytes:
    mask_gz, values = _ams_parts(b)
    out = bytearray(values)
    op = rng.randrange(3)
    if op == 0:
        for _ in range(rng.randint(1, 4)):
            at = 2 * rng.randrange(len(out) // 2)
            out[at : at + 2] = rng.choice((b"\x00\x7c", b"\x00\xfc", b"\x00\x7e", b"\xff\x7f"))
    elif op == 1:
        out = out[: -2 * rng.randint(1, 4)]
    else:
        out += rng.randbytes(rng.choice((1, 2, 4)))
    return _ams(mask_gz, bytes(out))


def _m_ams_trailing(rng: random.Random, v: Versions, b: bytes) -> bytes:
    """Bytes after the gzip member, inside the mask's declared length."""
    mask_gz, values = _ams_parts(b)
    junk = rng.choice((b"\x00", rng.randbytes(rng.randint(1, 64)), mask_gz))
    return _ams(mask_gz + junk, values)


GENERIC: dict[str, Mutator] = {
    "bit_flips": _m_bit_flips,
    "bytes_set": _m_bytes_set,
    "truncated": _m_truncated,
    "extended": _m_extended,
    "inserted": _m_inserted,
    "deleted": _m_deleted,
    "random": _m_random,
    "other_format": _m_other_format,
}
ZSTD: dict[str, Mutator] = {
    "declared_size": _m_declared_size,
    "frame_flags": _m_frame_flags,
    "blocks": _m_blocks,
    "skippable": _m_skippable,
}
MUTATORS: dict[UpdateFormat, dict[str, Mutator]] = {
    UpdateFormat.QDELTA: GENERIC | ZSTD | {"content": _m_qdelta_content},
    UpdateFormat.ZPATCH: GENERIC | ZSTD | {"content": _m_zpatch_content},
    UpdateFormat.AMS_FP16: GENERIC
    | {
        "mask_length": _m_ams_length,
        "mask": _m_ams_mask,
        "values": _m_ams_values,
        "trailing": _m_ams_trailing,
    },
}

# Two narrow strategies, each written for one body the formats wrongly accept (see
# test_fuzz.py's reproductions): rarer, as every such acceptance costs a model swap.
MUTATOR_WEIGHTS = {"skippable": 0.25, "trailing": 0.25}


@dataclass
class Keys:
    trusted: list[Signer]  # the current and the next trainer key: the device trusts both
    intruder: Signer
    ring: Keyring

    @classmethod
    def load(cls, directory: Path) -> Keys:
        current = load_private_key(directory / "trainer_ed25519.pem")
        following = load_private_key(directory / "trainer_ed25519.next.pem")
        ring = Keyring([current.public_key(), following.public_key()])
        return cls([Signer(current), Signer(following)], Signer(Ed25519PrivateKey.generate()), ring)


@dataclass(frozen=True)
class UpdateCase:
    seed: int
    fmt: UpdateFormat
    index: int
    kind: str  # "signed": a trusted signature over a corrupt body; "forged": no valid one
    strategy: str
    payload: bytes
    seq: int


def _update_msg(v: Versions, fmt: UpdateFormat, new_version: int) -> Update:
    return Update(
        base_version=1,
        base_sha256=v.v1_sha256,
        new_version=new_version,
        result_sha256=v.v2_sha256,
        format=fmt,
    )


FORGERIES = (
    "unsigned",
    "intruder",
    "intruder_as_trainer",
    "other_device",
    "tampered_body",
    "tampered_header",
    "signature_flips",
    "signature_random",
)


def _forged(
    rng: random.Random, keys: Keys, msg: Update, genuine: bytes, corrupt: bytes
) -> tuple[str, Update, bytes]:
    signer = rng.choice(keys.trusted)
    how = rng.choice(FORGERIES)
    payload = rng.choice((genuine, corrupt))
    if how == "unsigned":
        return how, msg, payload
    if how in ("intruder", "intruder_as_trainer"):
        signed = keys.intruder.sign(DEVICE, msg, payload)
        if how == "intruder_as_trainer":
            signed = signed.model_copy(update={"key_id": signer.key_id})
        return how, signed, payload
    if how == "other_device":
        return how, signer.sign(stranger(DEVICE), msg, payload), payload
    if how == "tampered_body":
        return (
            how,
            signer.sign(DEVICE, msg, genuine),
            corrupt if corrupt != genuine else genuine + b"\x00",
        )
    signed = signer.sign(DEVICE, msg, payload)
    if how == "tampered_header":
        other = rng.choice([f for f in UpdateFormat if f != msg.format])
        change = rng.choice(
            ({"result_sha256": sha(rng)}, {"new_version": msg.new_version + 1}, {"format": other})
        )
        return how, signed.model_copy(update=change), payload
    genuine_sig = bytes.fromhex(signed.signature or "")
    sig = genuine_sig
    while sig == genuine_sig:  # flips can cancel out
        sig = flip_bits(rng, sig) if how == "signature_flips" else rng.randbytes(64)
    return how, signed.model_copy(update={"signature": sig.hex()}), payload


def update_case(
    seed: int, v: Versions, keys: Keys, fmt: UpdateFormat, index: int, seq: int
) -> UpdateCase:
    rng = case_rng(seed, f"update/{fmt.value}", index)
    mutators = MUTATORS[fmt]
    names = list(mutators)
    strategy = rng.choices(names, [MUTATOR_WEIGHTS.get(n, 1.0) for n in names])[0]
    genuine = v.bodies[fmt]
    corrupt = mutators[strategy](rng, v, genuine)
    while corrupt == genuine:  # e.g. one bit flipped twice
        corrupt = flip_bits(rng, genuine)
    declared = fmt if rng.random() < 0.9 else rng.choice(list(UpdateFormat))
    if corrupt == v.bodies[declared]:
        declared = fmt  # another format's genuine body, declared as what it is: no corruption
    msg = _update_msg(v, declared, 2 + index)
    if rng.random() < 0.7:
        kind, payload = "signed", corrupt
        msg = rng.choice(keys.trusted).sign(DEVICE, msg, payload)
    else:
        kind = "forged"
        how, msg, payload = _forged(rng, keys, msg, genuine, corrupt)
        strategy = f"{how}/{strategy}"
    if declared != fmt:
        strategy += f"/as_{declared.value}"
    encoded = encode(msg, device_id=TRAINER_ID, seq=seq, boot=BOOT, body=payload)
    return UpdateCase(seed, fmt, index, kind, strategy, encoded, seq)


class FuzzDevice:
    """A device without a frame loop: its endpoint hands update and control messages to
    ``ModelSlots`` on the real student, which warms new models up on one video frame."""

    def __init__(self, slot_dir: Path, student: Path, rgb: np.ndarray, keys: Keys) -> None:
        self.endpoint = DeviceEndpoint(BrokerConfig(prefix=PREFIX), DEVICE)
        self.slots = ModelSlots(
            slot_dir,
            initial_model=student,
            open_engine=ENGINE.open,
            device_id=DEVICE,
            keyring=keys.ring,
        )
        running = self.slots.load()
        self.handover = Handover(running, trial_timeout_s=0)
        self.handover.record_frame(rgb, running.engine.infer(rgb))
        self.acks: list[Ack] = []
        self.slots.start(self.handover, send_ack=self.acks.append)
        for msg_type in (MessageType.UPDATE, MessageType.CONTROL):
            self.endpoint.on(msg_type, lambda env, topic: self.slots.submit(env))

    def send(self, topic: str, payload: bytes) -> str:
        """The endpoint's outcome for one MQTT message (as ``Receiver.feed``)."""
        before = self.endpoint.counters.snapshot()
        try:
            self.endpoint.receive(Inbound(topic, payload, 1, False, False, 1, 0))
        except Exception:
            return f"exception: {traceback.format_exc()}"
        after = self.endpoint.counters.snapshot()
        moved = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
        moved.pop("bytes_in", None)
        return label(moved)

    def settle(self) -> list[Ack]:
        if not self.slots.wait_idle(60):
            raise TimeoutError("the model slots' worker did not finish in 60 s")
        self.handover.between_frames()
        acks = self.acks[:]
        del self.acks[:]  # the list ModelSlots appends to
        return acks

    def running_sha(self) -> str:
        """The running model's hash, checked against its bytes, the slot file and slots.json."""
        active = self.slots.active
        if active is None or self.handover.running is not active:
            return "the frame loop runs another model than the slots' active one"
        on_disk = (self.slots.slot_dir / f"slot_{active.slot}.model").read_bytes()
        state = json.loads((self.slots.slot_dir / STATE_FILE).read_text())
        if not sha256_hex(active.data) == sha256_hex(on_disk) == active.sha256:
            return "running model's bytes, slot file and hash disagree"
        if state["active"] != active.slot or state[active.slot]["sha256"] != active.sha256:
            return "slots.json does not name the running model"
        return active.sha256

    def stop(self) -> None:
        self.slots.stop()


def _signed_control(keys: Keys, rollback_to: int, seq: int) -> bytes:
    control = Control(sampling_rate_fps=1.0, t_update_s=10.0, rollback_to=rollback_to)
    control = keys.trusted[0].sign(DEVICE, control)
    return encode(control, device_id=TRAINER_ID, seq=seq, boot=BOOT)


def _genuine(v: Versions, keys: Keys, fmt: UpdateFormat, new_version: int, seq: int) -> bytes:
    """The trainer's update: v0 -> v1 in qdelta (``new_version`` 1), else v1 -> v2 in ``fmt``."""
    if new_version == 1:
        payload = v.to_v1
        msg = Update(
            base_version=0,
            base_sha256=sha256_hex(v.v0),
            new_version=1,
            result_sha256=sha256_hex(v.v1),
        )
    else:
        payload, msg = v.bodies[fmt], _update_msg(v, fmt, new_version)
    signed = keys.trusted[0].sign(DEVICE, msg, payload)
    return encode(signed, device_id=TRAINER_ID, seq=seq, boot=BOOT, body=payload)


class UpdateFuzz:
    """The fuzz on one device, which runs v1 throughout: every corrupt or forged update to v2
    must be refused with a typed reason while v1 keeps running."""

    def __init__(self, v: Versions, keys: Keys, device: FuzzDevice, seed: int) -> None:
        self.v, self.keys, self.device, self.seed = v, keys, device, seed
        self.verified = {v.v1_sha256}
        self.report = Report("")
        self._seq = iter(range(1, 2**62))

    def start(self) -> None:
        """Take v1, then, in every format, the genuine v2 and a rollback to v1: the device can
        swap, and the fuzz sees it when it does."""
        self._expect_swap(_genuine(self.v, self.keys, UpdateFormat.QDELTA, 1, next(self._seq)), 1)
        self.finish()

    def finish(self) -> None:
        for fmt in UpdateFormat:
            self._expect_swap(_genuine(self.v, self.keys, fmt, 2, next(self._seq)), 2)
            self._rollback()

    def _expect_swap(self, payload: bytes, version: int) -> None:
        sha = sha256_hex(self.v.v1 if version == 1 else self.v.v2)
        got = self.device.send(UPDATE_TOPIC, payload)
        acks = self.device.settle()
        if got != DELIVERED or [a.ok for a in acks] != [True] or self.device.running_sha() != sha:
            raise AssertionError(f"a genuine update was not taken: {got}, {acks}")

    def _rollback(self) -> None:
        control = _signed_control(self.keys, 1, next(self._seq))
        got = self.device.send(CONTROL_TOPIC, control)
        acks = self.device.settle()
        ok = [a.ok for a in acks] == [True] and self.device.running_sha() == self.v.v1_sha256
        if got != DELIVERED or not ok:
            raise AssertionError(f"the rollback to v1 failed: {got}, {acks}")

    def run(self, fmt: UpdateFormat, cases: int, seed: int | None = None) -> Report:
        self.report = Report(fmt.value)
        started = time.perf_counter()
        pending = list(range(cases))
        while pending:
            batch, pending = pending[:BATCH], pending[BATCH:]
            pending = self._run_batch(fmt, batch, self.seed if seed is None else seed) + pending
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _run_batch(self, fmt: UpdateFormat, indices: list[int], seed: int) -> list[int]:
        """Feed a batch and check every ack in order; returns the cases to run again (those
        after a swap met v2, not v1)."""
        cases = [update_case(seed, self.v, self.keys, fmt, i, next(self._seq)) for i in indices]
        labels = [self.device.send(UPDATE_TOPIC, c.payload) for c in cases]
        acks = {a.ref_seq: a for a in self.device.settle() if a.ref_type == "update"}
        for position, (case, got) in enumerate(zip(cases, labels, strict=True)):
            if self._check(case, got, acks.get(case.seq)):
                self._rollback()
                return [c.index for c in cases[position + 1 :]]
        self._check_running(cases[-1])
        return []

    def _check(self, case: UpdateCase, got: str, ack: Ack | None) -> bool:
        """Count the case and record what is wrong with its fate; True when it swapped."""
        r = self.report
        r.cases += 1
        r.payloads += 1
        r.strategies[f"{case.kind}:{case.strategy.split('/')[0]}"] += 1
        outcome = "no ack" if ack is None else "accepted" if ack.ok else str(ack.reason)
        r.outcomes[f"{case.kind}:{outcome}"] += 1
        problem = self._problem(case, got, ack)
        if problem is not None:
            r.fail(problem=problem, **self._recipe(case, ack))
        return ack is not None and ack.ok

    def _problem(self, case: UpdateCase, got: str, ack: Ack | None) -> str | None:
        if got != DELIVERED:
            return f"the endpoint did not deliver a valid envelope: {got}"
        if ack is None:
            return "no acknowledgement"
        if ack.ok:
            return self._accepted(case, ack)
        if ack.model_sha256 not in self.verified:
            return f"refused, but runs an unverified model {ack.model_sha256}"
        if case.kind == "forged":
            ok = ack.reason == AckReason.BAD_SIGNATURE and ack.resync_from is None
            return None if ok else f"forged update refused as {ack.reason}: {ack.detail}"
        ok = ack.reason in SIGNED_REASONS and ack.resync_from == 1
        return None if ok else f"corrupt update refused as {ack.reason}: {ack.detail}"

    def _accepted(self, case: UpdateCase, ack: Ack) -> str | None:
        """A corrupt body taken: no unverified swap only if it made exactly the signed v2.
        Such bodies are listed apart (``accepted_corrupt``): malformed, but harmless."""
        running = self.device.running_sha()
        if case.kind == "forged" or not running == ack.model_sha256 == self.v.v2_sha256:
            return f"UNVERIFIED SWAP: {case.kind} update accepted, now runs {running}"
        accepted = self.report.extra.setdefault("accepted_corrupt", [])
        if len(accepted) < MAX_FAILURES:
            accepted.append(self._recipe(case, ack))
        self.report.extra["accepted_corrupt_count"] = (
            self.report.extra.get("accepted_corrupt_count", 0) + 1
        )
        return None

    def _check_running(self, case: UpdateCase) -> None:
        running = self.device.running_sha()
        if running not in self.verified:
            self.report.fail(
                problem=f"UNVERIFIED MODEL RUNS: {running}", **self._recipe(case, None)
            )

    def _recipe(self, case: UpdateCase, ack: Ack | None) -> dict[str, Any]:
        return {
            "seed": case.seed,
            "format": case.fmt.value,
            "index": case.index,
            "kind": case.kind,
            "strategy": case.strategy,
            "ack": None if ack is None else ack.model_dump(mode="json"),
            "body_hex": decode(case.payload).body[:4096].hex(),
        }


def warm_frame(shared: Path) -> np.ndarray:
    with av.open(str(shared / VIDEO)) as container:
        frame_ = next(f for i, f in enumerate(container.decode(video=0)) if i == 100)
    return frame_.to_ndarray(width=513, height=513, format="rgb24")


def _update_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--keys", type=Path, required=True)
    parser.add_argument("--slots", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=fuzz_cases())
    parser.add_argument("--seed", type=int, default=fuzz_seed())


def _fuzz(args: argparse.Namespace) -> UpdateFuzz:
    student = args.shared / STUDENT
    v, keys = Versions.make(student.read_bytes()), Keys.load(args.keys)
    device = FuzzDevice(args.slots, student, warm_frame(args.shared), keys)
    fuzz = UpdateFuzz(v, keys, device, args.seed)
    fuzz.start()
    return fuzz


def run_updates(args: argparse.Namespace) -> dict[str, Any]:
    logging.disable(logging.WARNING)  # every refusal logs a line; the acks are what is checked
    fuzz = _fuzz(args)
    for fmt in UpdateFormat:
        fuzz.run(fmt, WARMUP_CASES, args.seed + 1)
    baseline = peak_rss_bytes()
    reports = [_measured(lambda f=f: fuzz.run(f, args.cases)) for f in UpdateFormat]
    fuzz.finish()  # the device still takes genuine updates, in every format
    final = fuzz.device.running_sha()
    fuzz.device.stop()
    return {
        "baseline_rss": baseline,
        "rss_growth": peak_rss_bytes() - baseline,
        "key_ids": [s.key_id for s in fuzz.keys.trusted],
        "final_sha256": final,
        "v1_sha256": sha256_hex(fuzz.v.v1),
        "reports": {r.subject: r.as_dict() for r in reports},
    }


def replay_update(args: argparse.Namespace) -> dict[str, Any]:
    fuzz = _fuzz(args)
    fuzz.report = Report(args.format.value)
    fuzz._run_batch(args.format, [args.index], args.seed)
    fuzz.device.stop()
    return fuzz.report.as_dict()


# -- the run in a fresh interpreter ---------------------------------------------------------------


def _measured(run: Callable[[], Report]) -> Report:
    before = peak_rss_bytes()
    report = run()
    report.rss_growth = peak_rss_bytes() - before
    return report


def run_protocol(payloads: int, seed: int) -> dict[str, Any]:
    for msg_type in MessageType:  # warm-up: imports, caches, the allocator's arenas
        fuzz_protocol(msg_type, WARMUP_CASES, seed + 1)
    baseline = peak_rss_bytes()
    reports = [_measured(lambda t=t: fuzz_protocol(t, payloads, seed)) for t in MessageType]
    return {
        "baseline_rss": baseline,
        "rss_growth": peak_rss_bytes() - baseline,
        "reports": {r.subject: r.as_dict() for r in reports},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzzing")
    sub = parser.add_subparsers(dest="command", required=True)
    proto = sub.add_parser("protocol", help="fuzz every message type, print a JSON report")
    proto.add_argument("--payloads", type=int, default=fuzz_cases())
    proto.add_argument("--seed", type=int, default=fuzz_seed())
    replay = sub.add_parser("replay", help="run one protocol case on fresh endpoints")
    replay.add_argument("type", type=MessageType)
    replay.add_argument("index", type=int)
    replay.add_argument("--seed", type=int, default=fuzz_seed())
    _update_arguments(sub.add_parser("updates", help="fuzz update bodies through ModelSlots"))
    again = sub.add_parser("replay-update", help="run one update case on a fresh device")
    _update_arguments(again)
    again.add_argument("format", type=UpdateFormat)
    again.add_argument("index", type=int)
    args = parser.parse_args(argv)
    if args.command == "protocol":
        print(json.dumps(run_protocol(args.payloads, args.seed)))
    elif args.command == "replay":
        case = protocol_case(args.seed, args.type, args.index)
        report = Report(case.subject)
        run_case(Receiver(), case, report, args.seed)
        print(json.dumps({"strategy": case.strategy, **report.as_dict()}, indent=1))
    elif args.command == "updates":
        print(json.dumps(run_updates(args)))
    else:
        print(json.dumps(replay_update(args), indent=1))


if __name__ == "__main__":
    sys.exit(main())
