import itertools
import random

import pytest

from shared_schema.chunking import CHUNK_OVERHEAD, MIN_MESSAGE_BYTES, Reassembler, split
from shared_schema.envelope import Limits, decode, encode
from shared_schema.errors import ProtocolError, Reason
from shared_schema.messages import MessageType, Model

BOOT = "00000000000000aa"


def _model_envelope(size: int) -> bytes:
    body = random.Random(size).randbytes(size)
    return encode(Model(version=2), device_id="trainer", seq=1, boot=BOOT, body=body)


def _chunks(encoded: bytes, max_bytes: int, sender: str = "trainer") -> list:
    seq = itertools.count(100)
    payloads = split(
        encoded,
        max_bytes,
        inner_type=MessageType.MODEL,
        device_id=sender,
        boot=BOOT,
        next_seq=lambda: next(seq),
    )
    return [decode(p) for p in payloads], payloads


def test_small_messages_are_not_chunked():
    encoded = _model_envelope(1000)
    assert split(
        encoded, 1 << 20, inner_type=MessageType.MODEL, device_id="t", boot=BOOT, next_seq=lambda: 0
    ) == [encoded]


def test_chunks_fit_the_cap_and_reassemble_in_any_order_with_duplicates():
    encoded = _model_envelope(300_000)
    envs, payloads = _chunks(encoded, 16_384)
    assert len(envs) == -(-len(encoded) // (16_384 - CHUNK_OVERHEAD))
    assert all(len(p) <= 16_384 for p in payloads)
    order = envs + envs[:3]  # QoS 1 duplicates
    random.Random(1).shuffle(order)
    r = Reassembler()
    results = [r.add(e) for e in order]
    whole = [x for x in results if x is not None]
    assert whole == [encoded]
    assert decode(whole[0]).body == decode(encoded).body
    assert r.pending_bytes == 0


def test_missing_chunk_never_completes_and_expires():
    now = [0.0]
    r = Reassembler(ttl_s=10.0, clock=lambda: now[0])
    envs, _ = _chunks(_model_envelope(50_000), 8192)
    for env in envs[:-1]:
        assert r.add(env) is None
    now[0] = 11.0
    other, _ = _chunks(_model_envelope(20_000), 8192)
    r.add(other[0])  # any later chunk triggers expiry of the stale partial
    assert r.discarded == 1


def test_memory_bound_evicts_oldest_partial():
    r = Reassembler(max_pending=2)
    firsts = [_chunks(_model_envelope(20_000 + i), 8192)[0][0] for i in range(3)]
    for env in firsts:
        r.add(env)
    assert r.discarded == 1


def test_one_senders_flood_never_evicts_anothers_message():
    r = Reassembler(max_pending=4)
    message = _model_envelope(30_000)
    victim, _ = _chunks(message, 8192, sender="cam-a")
    assert r.add(victim[0]) is None
    for i in range(50):  # cam-b starts 50 messages and finishes none
        r.add(_chunks(_model_envelope(20_000 + i), 8192, sender="cam-b")[0][0])
    assert r.discarded == 48  # cam-b's own, beyond its two
    results = [r.add(env) for env in victim[1:]]
    assert results[-1] == message  # cam-a's, whole


def test_inconsistent_chunk_is_rejected():
    envs, _ = _chunks(_model_envelope(30_000), 8192)
    r = Reassembler()
    r.add(envs[0])
    forged = envs[1].msg.model_copy(update={"count": envs[1].msg.count + 1})
    bad = decode(encode(forged, device_id="trainer", seq=999, boot=BOOT, body=envs[1].body))
    with pytest.raises(ProtocolError) as err:
        r.add(bad)
    assert err.value.reason == Reason.BAD_CHUNK


def test_corrupted_reassembly_fails_its_hash():
    envs, _ = _chunks(_model_envelope(30_000), 8192)
    r = Reassembler()
    forged_body = bytes([envs[0].body[0] ^ 1]) + envs[0].body[1:]
    r.add(decode(encode(envs[0].msg, device_id="trainer", seq=5, boot=BOOT, body=forged_body)))
    with pytest.raises(ProtocolError) as err:
        for env in envs[1:]:
            r.add(env)
    assert err.value.reason == Reason.BAD_CHUNK


def test_chunked_message_over_the_inner_limit_is_refused_early():
    # The allowance is the inner type's body limit plus the largest possible header (256 KiB).
    envs, _ = _chunks(_model_envelope(300_000), 65_536)
    r = Reassembler(limits=Limits(body_bytes={MessageType.MODEL: 10_000}))
    with pytest.raises(ProtocolError) as err:
        r.add(envs[0])
    assert err.value.reason == Reason.OVERSIZE


def test_cap_below_minimum_is_a_configuration_error():
    with pytest.raises(ValueError):
        split(
            _model_envelope(10_000),
            MIN_MESSAGE_BYTES - 1,
            inner_type=MessageType.MODEL,
            device_id="t",
            boot=BOOT,
            next_seq=lambda: 0,
        )
