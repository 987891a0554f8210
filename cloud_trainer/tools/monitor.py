"""Watch the protocol: every message under a topic prefix, decoded, one JSON line each."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable

from shared_schema.envelope import decode
from shared_schema.errors import ProtocolError
from shared_schema.mqtt import BrokerConfig, Inbound, MqttLink
from shared_schema.topics import parse_plain_topic, parse_topic


def describe(config: BrokerConfig, inbound: Inbound) -> dict[str, object]:
    """One message as a JSON-able record; a malformed one is described, not raised."""
    record: dict[str, object] = {
        "topic": inbound.topic,
        "bytes": len(inbound.payload),
        "retain": inbound.retain,
    }
    try:
        if parse_plain_topic(config.prefix, inbound.topic) is not None:
            record["plain"] = _plain(inbound.payload)
            return record
        parse_topic(config.prefix, inbound.topic)
        env = decode(inbound.payload)
    except ProtocolError as exc:
        record["rejected"] = exc.reason.value
        record["detail"] = exc.detail
        return record
    record.update(
        device_id=env.device_id,
        seq=env.header.seq,
        sent_at=env.header.sent_at,
        body_len=env.header.body_len,
        msg=env.msg.model_dump(mode="json"),
    )
    return record


def _plain(payload: bytes) -> object:
    """A plain topic's value: its JSON, else its text (``online``), else its length."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return f"({len(payload)} bytes, not text)"
    try:
        return json.loads(text)
    except ValueError:
        return text


def monitor(
    config: BrokerConfig,
    emit: Callable[[str], None],
    *,
    count: int | None = None,
    timeout_s: float | None = None,
) -> int:
    """Print messages until ``count`` were seen or ``timeout_s`` passed; returns how many."""
    observer = config.model_copy(update={"persistent_session": False})
    records: queue.Queue[dict[str, object]] = queue.Queue()
    link = MqttLink(observer, client_id=f"monitor-{time.monotonic_ns():x}")
    link.subscribe(f"{config.prefix}/#", 1, lambda m: records.put(describe(config, m)))
    link.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen = 0
    try:
        while count is None or seen < count:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                break
            try:
                record = records.get(timeout=min(wait or 0.5, 0.5))
            except queue.Empty:
                if link.refusal is not None:
                    raise link.refusal from None
                continue
            emit(json.dumps(record))
            seen += 1
    finally:
        link.stop()
    return seen
