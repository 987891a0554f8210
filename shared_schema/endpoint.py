"""Typed protocol endpoints over one MQTT link: how both sides send and receive messages.

An endpoint numbers what it sends (sequence numbers unique within a random ``boot`` id), chunks
envelopes larger than the broker allows, and on receipt: parses the topic, decodes and validates
the envelope, checks that it came from the device the topic names and that its type belongs on
that topic, reassembles chunks, drops QoS 1 duplicates, and hands the message to the handler
registered for its type. The plain topics (``status``, ``state``, ``session``: for people, not
envelopes) are published as they are; the trainer takes every device's status. Every rejection
is logged (throttled) and counted as ``rejected.<reason>``; nothing a peer sends can raise out
of the receive path.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable

from shared_schema.chunking import Reassembler, split
from shared_schema.counters import Counters, DuplicateFilter, RejectionLog
from shared_schema.envelope import DEFAULT_LIMITS, Envelope, Limits, decode, encode
from shared_schema.errors import ProtocolError, Reason
from shared_schema.messages import AnyMessage, MessageType
from shared_schema.mqtt import BrokerConfig, Inbound, MqttLink, Outbound, PublishHandle
from shared_schema.topics import (
    DELIVERY,
    OFFLINE,
    ONLINE,
    PLAIN_DELIVERY,
    Direction,
    Plain,
    Topic,
    device_subscriptions,
    parse_plain_topic,
    parse_topic,
    plain_topic,
    topic_for,
    trainer_subscriptions,
    validate_device_id,
)

log = logging.getLogger(__name__)

MessageHandler = Callable[[Envelope, Topic], None]


class Endpoint:
    """Shared machinery; use DeviceEndpoint or TrainerEndpoint."""

    #: the directions this side accepts messages from
    _accepts: frozenset[Direction | None] = frozenset()

    def __init__(
        self,
        config: BrokerConfig,
        *,
        sender_id: str,
        limits: Limits = DEFAULT_LIMITS,
        counters: Counters | None = None,
        link: MqttLink | None = None,
    ) -> None:
        """``link``: a connection of its own making (one relayed through another process:
        anything with MqttLink's methods); by default, an MqttLink to ``config``'s broker."""
        self.config = config
        self.prefix = config.prefix
        self.sender_id = validate_device_id(sender_id)
        self.boot = secrets.token_hex(8)
        self.limits = limits
        self.counters = counters or Counters()
        self._rejections = RejectionLog(self.counters, log)
        # Acks name only a sequence number: starting from the clock (in µs) keeps a restarted
        # sender's numbers above its previous life's, so a late ack cannot match a new message.
        self._seq = itertools.count(time.time_ns() // 1000)
        self._seq_lock = threading.Lock()
        self._handlers: dict[MessageType, MessageHandler] = {}
        self._dedupe = DuplicateFilter()
        self._reassembler = Reassembler(limits=limits)
        self._connect_hooks: list[Callable[[], None]] = []
        self.link = link or MqttLink(
            config,
            client_id=config.client_id or sender_id,
            will=self._will(),
            on_connect=self._on_connect,
            counters=self.counters,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for topic_filter in self._subscriptions():
            self.link.subscribe(topic_filter, 1, self.receive)
        self.link.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.link.stop(timeout=timeout)

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self.link.wait_connected(timeout)

    def on(self, msg_type: MessageType, handler: MessageHandler) -> None:
        """Register the handler for one message type (runs on the dispatcher thread)."""
        self._handlers[msg_type] = handler

    def on_connect(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` after every (re)connect, e.g. to announce the device again."""
        self._connect_hooks.append(hook)

    # -- sending ------------------------------------------------------------------------------

    def next_seq(self) -> int:
        with self._seq_lock:
            return next(self._seq)

    def encode(self, msg: AnyMessage, body: bytes = b"", *, seq: int | None = None) -> bytes:
        """One envelope from this sender (exposed so a device can spool it before sending)."""
        return encode(
            msg,
            device_id=self.sender_id,
            seq=self.next_seq() if seq is None else seq,
            boot=self.boot,
            body=body,
            limits=self.limits,
        )

    def publish_encoded(
        self, device_id: str, msg_type: MessageType, encoded: bytes, direction: Direction | None
    ) -> PublishHandle:
        """Publish an already encoded envelope, chunked if the broker needs it."""
        delivery = DELIVERY[msg_type]
        topic = topic_for(self.prefix, device_id, msg_type, direction)
        payloads = split(
            encoded,
            self.config.max_message_bytes,
            inner_type=msg_type,
            device_id=self.sender_id,
            boot=self.boot,
            next_seq=self.next_seq,
        )
        if len(payloads) > 1 and delivery.retain:
            raise ValueError(f"retained {msg_type.value} messages cannot be chunked")
        self.counters.inc("bytes_out", sum(len(p) for p in payloads))
        self.counters.inc(f"sent.{msg_type.value}")
        return self.link.publish_many(
            [Outbound(topic, p, delivery.qos, delivery.retain, delivery.expiry_s) for p in payloads]
        )

    def _send(
        self, device_id: str, direction: Direction | None, msg: AnyMessage, body: bytes
    ) -> PublishHandle:
        seq = self.next_seq()
        encoded = self.encode(msg, body, seq=seq)
        handle = self.publish_encoded(device_id, MessageType(msg.type), encoded, direction)
        handle.seq = seq  # what an ack of it names
        return handle

    # -- receiving ----------------------------------------------------------------------------

    def _subscriptions(self) -> list[str]:
        raise NotImplementedError

    def _will(self) -> Outbound | None:
        """The last will, framed before connecting (needs ``boot`` and ``_seq``)."""
        return None

    def _on_connect(self, session_present: bool) -> None:
        for hook in self._connect_hooks:
            hook()

    def receive(self, inbound: Inbound) -> None:
        """One message as the link delivers it: validated, then handed to its handler."""
        self.counters.inc("bytes_in", len(inbound.payload))
        try:
            if self._receive_plain(inbound):
                return
            envelope, topic = self._validate(inbound)
            if envelope is None:
                return
        except ProtocolError as exc:
            self._rejections.reject(exc.reason.value, f"{inbound.topic}: {exc.detail}")
            return
        handler = self._handlers.get(envelope.type)
        if handler is None:
            self.counters.inc(f"unhandled.{envelope.type.value}")
            return
        self.counters.inc(f"received.{envelope.type.value}")
        handler(envelope, topic)

    def _receive_plain(self, inbound: Inbound) -> bool:
        """True if ``inbound`` was on a plain topic (and handled); no side takes any but the
        trainer, which takes every device's status."""
        return False

    def publish_plain(self, device_id: str, kind: Plain, payload: bytes) -> PublishHandle | None:
        """A plain topic's new value (retained), while connected: a state is worth only its
        latest, and queued ones would crowd out what must arrive (segments, acks)."""
        if not self.link.connected:
            self.counters.inc(f"plain.{kind.value}_skipped_offline")
            return None
        return self.link.publish(self._plain(device_id, kind, payload))

    def _plain(self, device_id: str, kind: Plain, payload: bytes) -> Outbound:
        d = PLAIN_DELIVERY
        topic = plain_topic(self.prefix, device_id, kind)
        return Outbound(topic, payload, d.qos, d.retain, d.expiry_s)

    def check(self, inbound: Inbound) -> tuple[Envelope, Topic]:
        """What can be checked of one message alone: its topic, envelope, sender and type
        (a chunk's: the type of the message it is part of)."""
        topic = parse_topic(self.prefix, inbound.topic)
        if topic.direction not in self._accepts:
            raise ProtocolError(Reason.BAD_TOPIC, "not a topic this side receives")
        envelope = self._check_sender(decode(inbound.payload, self.limits), topic)
        if envelope.type == MessageType.CHUNK and envelope.msg.inner_type != topic.type:
            raise ProtocolError(Reason.WRONG_TYPE, "chunk of another message type")
        return envelope, topic

    def _validate(self, inbound: Inbound) -> tuple[Envelope | None, Topic]:
        envelope, topic = self.check(inbound)
        if envelope.type == MessageType.CHUNK:
            if self._dedupe.seen(envelope.key):
                self.counters.inc("duplicates")
                return None, topic
            whole = self._reassembler.add(envelope)
            if whole is None:
                return None, topic
            envelope = self._check_sender(decode(whole, self.limits), topic)
        if envelope.type != topic.type:
            raise ProtocolError(
                Reason.WRONG_TYPE, f"{envelope.type.value} message on a {topic.type.value} topic"
            )
        if DELIVERY[envelope.type].dedupe and self._dedupe.seen(envelope.key):
            self.counters.inc("duplicates")
            return None, topic
        return envelope, topic

    def _check_sender(self, envelope: Envelope, topic: Topic) -> Envelope:
        """Uplink must come from the device the topic names; downlink and metrics from anyone
        the broker's ACL lets publish there (the trainer)."""
        if topic.direction == Direction.UP and envelope.device_id != topic.device_id:
            raise ProtocolError(
                Reason.WRONG_DEVICE,
                f"sent by {envelope.device_id!r} on {topic.device_id!r}'s topic",
            )
        return envelope


class DeviceEndpoint(Endpoint):
    """A device: sends up, receives its own down/#, says online/offline on ``status``."""

    _accepts = frozenset({Direction.DOWN})

    def __init__(
        self,
        config: BrokerConfig,
        device_id: str,
        *,
        limits: Limits = DEFAULT_LIMITS,
        counters: Counters | None = None,
    ) -> None:
        self.device_id = validate_device_id(device_id)
        super().__init__(config, sender_id=device_id, limits=limits, counters=counters)

    def _status(self, state: bytes) -> Outbound:
        return self._plain(self.device_id, Plain.STATUS, state)

    def _will(self) -> Outbound:
        return self._status(OFFLINE)

    def send(self, msg: AnyMessage, body: bytes = b"") -> PublishHandle:
        return self._send(self.device_id, Direction.UP, msg, body)

    def stop(self, timeout: float = 5.0) -> None:
        """Say 'offline' explicitly: a clean disconnect does not fire the will."""
        self.link.stop(final=self._status(OFFLINE), timeout=timeout)

    def _subscriptions(self) -> list[str]:
        return device_subscriptions(self.prefix, self.device_id)

    def _on_connect(self, session_present: bool) -> None:
        self.link.publish(self._status(ONLINE))
        super()._on_connect(session_present)


class TrainerEndpoint(Endpoint):
    """The trainer: receives every device's uplink and status, sends down to any device."""

    _accepts = frozenset({Direction.UP, None})

    def __init__(
        self,
        config: BrokerConfig,
        *,
        trainer_id: str = "trainer",
        limits: Limits = DEFAULT_LIMITS,
        counters: Counters | None = None,
        subscriptions: list[str] | None = None,
        link: MqttLink | None = None,
    ) -> None:
        """``subscriptions``: the topic filters it takes (default: every device's uplink and
        status; none for an endpoint that only sends, shared ones for one of several fronts)."""
        self._status_handler: Callable[[str, bool], None] | None = None
        every = trainer_subscriptions(config.prefix)
        self._filters = every if subscriptions is None else subscriptions
        super().__init__(config, sender_id=trainer_id, limits=limits, counters=counters, link=link)

    def send(self, device_id: str, msg: AnyMessage, body: bytes = b"") -> PublishHandle:
        direction = None if msg.type == MessageType.METRICS else Direction.DOWN
        return self._send(device_id, direction, msg, body)

    def on_status(self, handler: Callable[[str, bool], None]) -> None:
        """``handler(device_id, online)`` for each device status (on the dispatcher thread)."""
        self._status_handler = handler

    def _receive_plain(self, inbound: Inbound) -> bool:
        plain = parse_plain_topic(self.prefix, inbound.topic)
        if plain is None:
            return False
        device_id, kind = plain
        if kind != Plain.STATUS or inbound.payload not in (ONLINE, OFFLINE):
            raise ProtocolError(Reason.WRONG_TYPE, "not 'online' or 'offline'")
        self.counters.inc("received.status")
        if self._status_handler is not None:
            self._status_handler(device_id, inbound.payload == ONLINE)
        return True

    def _subscriptions(self) -> list[str]:
        return self._filters
