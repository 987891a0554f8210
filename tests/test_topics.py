import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared_schema.errors import ProtocolError, Reason
from shared_schema.messages import MessageType
from shared_schema.topics import (
    ROUTES,
    Direction,
    Plain,
    device_subscriptions,
    parse_plain_topic,
    parse_topic,
    plain_json,
    plain_topic,
    topic_for,
    trainer_subscriptions,
    validate_device_id,
)


@pytest.mark.parametrize(
    ("msg_type", "direction", "expected"),
    [
        (MessageType.HELLO, None, "ams/cam-1/up/hello"),
        (MessageType.SEGMENT, Direction.UP, "ams/cam-1/up/segment"),
        (MessageType.UPDATE, None, "ams/cam-1/down/update"),
        (MessageType.CONTROL, None, "ams/cam-1/down/control"),
        (MessageType.ACK, Direction.UP, "ams/cam-1/up/ack"),
        (MessageType.ACK, Direction.DOWN, "ams/cam-1/down/ack"),
    ],
)
def test_topic_for_builds_the_spec_tree(msg_type, direction, expected):
    assert topic_for("ams", "cam-1", msg_type, direction) == expected
    parsed = parse_topic("ams", expected)
    assert (parsed.device_id, parsed.type) == ("cam-1", msg_type)
    assert str(parsed) == expected


def test_every_routed_type_round_trips_in_every_direction():
    for msg_type, directions in ROUTES.items():
        for direction in directions:
            topic = topic_for("site/a", "dev_7.x", msg_type, direction)
            assert parse_topic("site/a", topic).direction == direction


def test_ack_needs_an_explicit_direction():
    with pytest.raises(ProtocolError) as err:
        topic_for("ams", "cam-1", MessageType.ACK)
    assert err.value.reason == Reason.WRONG_TYPE


def test_types_in_the_wrong_direction_are_refused():
    with pytest.raises(ProtocolError):
        topic_for("ams", "cam-1", MessageType.UPDATE, Direction.UP)
    with pytest.raises(ProtocolError):
        parse_topic("ams", "ams/cam-1/up/update")
    with pytest.raises(ProtocolError):
        topic_for("ams", "cam-1", MessageType.CHUNK)


@pytest.mark.parametrize(
    "bad",
    ["", "a/b", "+", "#", "cam+1", "cam#", "$SYS", "-lead", "x" * 65, "caméra", "a b", "a\x00b"],
)
def test_invalid_device_ids_are_rejected(bad):
    with pytest.raises(ProtocolError) as err:
        validate_device_id(bad)
    assert err.value.reason == Reason.BAD_TOPIC
    with pytest.raises(ProtocolError):
        topic_for("ams", bad, MessageType.HELLO)


def test_device_id_length_bound_is_inclusive():
    assert validate_device_id("x" * 64) == "x" * 64


@pytest.mark.parametrize("bad", ["", "a//b", "/a", "a/", "a/+", "#", "$SYS", "a b", "p" * 129])
def test_invalid_prefixes_are_rejected(bad):
    with pytest.raises(ProtocolError):
        topic_for(bad, "cam-1", MessageType.HELLO)


@pytest.mark.parametrize(
    "topic",
    [
        "other/cam-1/up/hello",
        "ams/cam-1/up",
        "ams/cam-1/sideways/hello",
        "ams/cam-1/up/hello/extra",
        "ams/+/up/hello",
        "ams/cam-1/up/chunk",
        "ams/cam-1/down/status",
        "ams/cam-1/up/nonsense",
        "ams",
    ],
)
def test_parse_rejects_foreign_topics(topic):
    with pytest.raises(ProtocolError) as err:
        parse_topic("ams", topic)
    assert err.value.reason == Reason.BAD_TOPIC


def test_subscriptions():
    assert device_subscriptions("ams", "cam-1") == ["ams/cam-1/down/#"]
    assert trainer_subscriptions("ams") == ["ams/+/up/#", "ams/+/status"]


@given(st.text(max_size=80))
def test_parse_never_raises_anything_but_protocol_error(text):
    with contextlib.suppress(ProtocolError):
        parse_topic("ams", text)


def test_plain_topics_sit_beside_the_envelopes():
    assert plain_topic("ams", "cam-1", Plain.STATUS) == "ams/cam-1/status"
    assert parse_plain_topic("ams", "ams/cam-1/state") == ("cam-1", Plain.STATE)
    for other in ("ams/cam-1/up/hello", "ams/cam-1/metrics", "ams/cam-1/status/x", "x/cam-1/state"):
        assert parse_plain_topic("ams", other) is None
    with pytest.raises(ProtocolError):
        parse_plain_topic("ams", "ams/$SYS/status")


def test_plain_json_is_strict_json_with_its_time():
    text = plain_json({"fps": float("nan"), "version": 3, "classes": (0, 15), "path": Path("/x")})
    values = json.loads(text)  # strict: NaN would not parse in most readers
    assert values["fps"] is None and values["classes"] == [0, 15] and values["path"] == "/x"
    assert values["updated_at"].endswith("+00:00")
