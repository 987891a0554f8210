import hashlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared_schema.envelope import (
    DEFAULT_LIMITS,
    MAGIC,
    PREFIX_SIZE,
    Limits,
    decode,
    encode,
)
from shared_schema.errors import ProtocolError, Reason
from shared_schema.messages import (
    Ack,
    Chunk,
    Control,
    MessageType,
    Segment,
    Update,
)
from tests.samples import ALL

BOOT = "0123456789abcdef"
IDS = [type(m).__name__ for m, _ in ALL]


def _encode(msg, body=b"", **kw):
    return encode(msg, device_id="cam-1", seq=7, boot=BOOT, body=body, sent_at=1.5, **kw)


def _split(data: bytes):
    (header_len,) = struct.unpack_from(">I", data, 4)
    return json.loads(data[PREFIX_SIZE : PREFIX_SIZE + header_len]), data[
        PREFIX_SIZE + header_len :
    ]


def _reframe(header: dict, body: bytes, version: int = 1) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">3sBI", MAGIC, version, len(raw)) + raw + body


@pytest.mark.parametrize(("msg", "body"), ALL, ids=IDS)
def test_round_trip_every_type(msg, body):
    env = decode(_encode(msg, body))
    assert env.msg == msg
    assert env.body == body
    assert env.type == MessageType(msg.type)
    assert env.key == ("cam-1", BOOT, 7)
    assert env.header.body_sha256 == hashlib.sha256(body).hexdigest()
    assert env.header.sent_at == 1.5


@pytest.mark.parametrize(("msg", "body"), ALL, ids=IDS)
def test_every_truncation_is_rejected(msg, body):
    data = _encode(msg, body)
    cuts = sorted(
        {0, 1, 3, PREFIX_SIZE - 1, PREFIX_SIZE, PREFIX_SIZE + 5, len(data) - 1}
        | set(range(0, len(data), max(1, len(data) // 50)))
    )
    for cut in cuts:
        if cut >= len(data):
            continue
        with pytest.raises(ProtocolError) as err:
            decode(data[:cut])
        assert err.value.reason in {Reason.TRUNCATED, Reason.BAD_HEADER}, cut


@pytest.mark.parametrize(("msg", "body"), ALL, ids=IDS)
def test_wrong_schema_version_is_rejected(msg, body):
    data = bytearray(_encode(msg, body))
    for version in (0, 2, 255):
        data[3] = version
        with pytest.raises(ProtocolError) as err:
            decode(bytes(data))
        assert err.value.reason == Reason.UNSUPPORTED_VERSION


@pytest.mark.parametrize(("msg", "body"), ALL, ids=IDS)
def test_tampered_body_or_hash_is_rejected(msg, body):
    header, raw_body = _split(_encode(msg, body))
    if raw_body:
        flipped = bytes([raw_body[0] ^ 1]) + raw_body[1:]
        with pytest.raises(ProtocolError) as err:
            decode(_reframe(header, flipped))
        assert err.value.reason == Reason.BAD_HASH
    header["body_sha256"] = "0" * 64
    with pytest.raises(ProtocolError) as err:
        decode(_reframe(header, raw_body))
    assert err.value.reason == Reason.BAD_HASH


@pytest.mark.parametrize(("msg", "body"), ALL, ids=IDS)
def test_oversize_body_is_rejected_on_both_sides(msg, body):
    msg_type = MessageType(msg.type)
    if not body:
        # Types without a body accept none at all.
        header, _ = _split(_encode(msg))
        header["body_len"] = 1
        header["body_sha256"] = hashlib.sha256(b"x").hexdigest()
        with pytest.raises(ProtocolError) as err:
            decode(_reframe(header, b"x"))
        assert err.value.reason == Reason.OVERSIZE
        return
    tight = Limits(body_bytes={msg_type: len(body) - 1})
    with pytest.raises(ProtocolError) as err:
        decode(_encode(msg, body), tight)
    assert err.value.reason == Reason.OVERSIZE
    with pytest.raises(ProtocolError) as err:
        _encode(msg, body, limits=tight)
    assert err.value.reason == Reason.OVERSIZE


def test_oversize_header_is_rejected_before_parsing():
    data = bytearray(
        _encode(
            Segment(
                width=64, height=64, timestamps=(1.0,), sampling_rate_fps=1.0, bitrate_kbps=200.0
            ),
            b"x",
        )
    )
    struct.pack_into(">I", data, 4, DEFAULT_LIMITS.header_bytes + 1)
    with pytest.raises(ProtocolError) as err:
        decode(bytes(data))
    assert err.value.reason == Reason.OVERSIZE


def test_trailing_bytes_and_bad_magic_are_rejected():
    msg, body = ALL[1]
    data = _encode(msg, body)
    with pytest.raises(ProtocolError) as err:
        decode(data + b"\x00")
    assert err.value.reason == Reason.TRAILING_BYTES
    with pytest.raises(ProtocolError) as err:
        decode(b"XYZ" + data[3:])
    assert err.value.reason == Reason.BAD_MAGIC


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("msg", "type"), "teleport"),
        (("msg", "sampling_rate_fps"), "fast"),
        (("msg", "sampling_rate_fps"), -1.0),
        (("msg", "t_update_s"), 0),
        (("msg", "surprise"), 1),
        (("surprise",), 1),
        (("seq",), -1),
        (("seq",), 1.5),
        (("seq",), "7"),
        (("boot",), "xyz"),
        (("device_id",), "a/b"),
        (("device_id",), "+"),
        (("sent_at",), -3.0),
    ],
)
def test_bad_header_fields_are_rejected(path, value):
    header, body = _split(_encode(Control(sampling_rate_fps=1.0, t_update_s=10.0)))
    node = header
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ProtocolError) as err:
        decode(_reframe(header, body))
    assert err.value.reason == Reason.BAD_HEADER
    assert path[-1] in err.value.detail or "type" in err.value.detail


def test_nan_and_infinity_are_rejected():
    data = _encode(Control(sampling_rate_fps=1.0, t_update_s=10.0))
    for token in (b"NaN", b"Infinity"):
        bad = data.replace(b'"t_update_s":10.0', b'"t_update_s":' + token)
        with pytest.raises(ProtocolError) as err:
            decode(bad.replace(data[4:8], struct.pack(">I", len(bad) - PREFIX_SIZE)))
        assert err.value.reason == Reason.BAD_HEADER


def test_message_invariants():
    with pytest.raises(ValidationError):
        Update(base_version=5, base_sha256="0" * 64, new_version=5, result_sha256="0" * 64)
    with pytest.raises(ValidationError):
        Ack(ref_type="update", ref_seq=1, ok=False)
    with pytest.raises(ValidationError):
        Ack(ref_type="update", ref_seq=1, ok=True, reason="bad_hash")
    with pytest.raises(ValidationError):
        Segment(
            width=64, height=64, timestamps=(2.0, 1.0), sampling_rate_fps=1.0, bitrate_kbps=200.0
        )
    with pytest.raises(ValidationError):
        Segment(width=64, height=64, timestamps=(), sampling_rate_fps=1.0, bitrate_kbps=200.0)
    with pytest.raises(ValidationError):
        Chunk(
            inner_type=MessageType.CHUNK,
            msg_id="ab",
            index=0,
            count=2,
            total_len=10,
            total_sha256="0" * 64,
        )


def test_limits_refuse_bodies_for_bodyless_types():
    with pytest.raises(ValidationError):
        Limits(body_bytes={MessageType.CONTROL: 10})


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_random_bytes_only_ever_raise_protocol_error(data):
    with pytest.raises(ProtocolError):
        decode(data)


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_random_bytes_after_a_valid_prefix_only_ever_raise_protocol_error(data):
    framed = struct.pack(">3sBI", MAGIC, 1, len(data)) + data
    with pytest.raises(ProtocolError):
        decode(framed)


@settings(max_examples=200)
@given(st.data())
def test_random_corruption_of_valid_envelopes_is_detected(data):
    msg, body = data.draw(st.sampled_from(ALL))
    encoded = bytearray(_encode(msg, body))
    pos = data.draw(st.integers(0, len(encoded) - 1))
    encoded[pos] ^= data.draw(st.integers(1, 255))
    try:
        env = decode(bytes(encoded))
    except ProtocolError:
        return
    # A flip inside the JSON can leave it valid (e.g. a digit of a number); the envelope must then
    # still be self-consistent, and the body can never have changed unnoticed.
    assert env.body == body
