"""A thin MQTT layer on paho-mqtt 2.x, the same for devices and the trainer.

What it adds to paho:
- settings as one typed ``BrokerConfig`` (MQTT 5 or 3.1.1, TLS, credentials, persistent session);
- connection in the background with exponential reconnect backoff, resubscription on every
  connect, and a hook the owner uses to (re)announce itself;
- a dispatcher thread behind a bounded queue, so a slow handler never blocks the network loop.
  QoS 1 messages are acknowledged only after their handler has run (manual ack): a crash before
  that makes the broker redeliver them, and MQTT 5's Receive Maximum, set to the queue bound,
  keeps the broker from sending more unacknowledged messages than the queue holds. QoS 0
  messages beyond the bound are dropped and counted.

Correctness never depends on MQTT 5 features: over 3.1.1 the same code runs without the
properties (content type, message expiry, session expiry, receive maximum).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from shared_schema.config_files import (
    ConfigFileError,
    expand_config,
    read_toml,
    validation_message,
)
from shared_schema.counters import Counters
from shared_schema.messages import MAX_MQTT_PAYLOAD
from shared_schema.topics import validate_prefix

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.amstream.envelope"
# The keys of a BrokerConfig that are paths: a config file's loader expands them.
PATH_KEYS = frozenset({"ca_file", "cert_file", "key_file", "password_file"})


# CONNACK reasons no retry can change (MQTT 5 codes; paho maps 3.1.1's onto them): client id
# not valid, bad user name or password, not authorized, banned, bad authentication method.
_LOGIN = "mqtt.username and mqtt.password_file"
_PERMANENT_REFUSALS = {133: "mqtt.client_id", 134: _LOGIN, 138: "mqtt.username", 140: _LOGIN,
                       # mosquitto says it of a wrong password too
                       135: f"{_LOGIN}, and that the broker knows this login"}  # fmt: skip


class BrokerRefused(ConfigFileError):
    """The broker cannot be used with these settings, and retrying will not change that (a
    refused login, a name that does not resolve, a certificate that does not verify)."""


class _Client(paho.Client):
    """paho's client, keeping why the last connection attempt failed: paho retries and drops
    the exception, and a person needs the reason."""

    last_error: OSError | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_error = exc
            raise


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None  # client certificate, one per device
    key_file: Path | None = None
    insecure: bool = False  # skip the server hostname check (tests with self-signed certs only)

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class BrokerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    prefix: str = "ams"
    client_id: str | None = Field(None, min_length=1, max_length=128)
    keepalive_s: int = Field(30, ge=5, le=3600)
    tls: TlsConfig | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    # Keep the broker-side session (subscriptions, queued QoS 1 messages) across disconnects.
    persistent_session: bool = True
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, le=2**32 - 1)
    reconnect_min_s: float = Field(0.5, gt=0.0, le=60.0)
    reconnect_max_s: float = Field(30.0, gt=0.0, le=3600.0)
    inbound_queue_messages: int = Field(256, ge=1, le=65535)
    inbound_queue_bytes: int = Field(256 * 2**20, ge=2**16)
    outbound_queue_messages: int = Field(1000, ge=1)
    # Larger envelopes are chunked (shared_schema.chunking); set to the broker's cap.
    max_message_bytes: int = Field(MAX_MQTT_PAYLOAD, ge=4096, le=MAX_MQTT_PAYLOAD)

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, prefix: str) -> str:
        return validate_prefix(prefix)

    @model_validator(mode="after")
    def _consistent(self) -> BrokerConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs a username")
        return self

    def read_password(self) -> str | None:
        if self.password_file is not None:
            try:
                return self.password_file.read_text().rstrip("\r\n")
            except OSError as exc:
                raise ConfigFileError(
                    f"mqtt.password_file: cannot read {self.password_file}: {exc.strerror or exc}"
                ) from exc
        return self.password.get_secret_value() if self.password else None


# Certificate checks no retry changes: another CA's certificate, a self-signed one, a name
# the certificate does not hold (OpenSSL's X509_V_ERR codes). "Not yet valid" and "expired"
# are left to retry: a device that booted with no clock gets one from NTP.
_PERMANENT_TLS = {18, 19, 20, 21, 62}


def _permanent(exc: OSError | None, config: BrokerConfig) -> str | None:
    """Why the failed connection will fail again whatever the network does, and the fix; or
    None: a name that does not exist (not a resolver that is down), a certificate that cannot
    verify."""
    if isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_NONAME:
        return (
            f"mqtt.host {config.host!r} does not resolve ({exc.strerror}): fix mqtt.host in the"
            " config"
        )
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in _PERMANENT_TLS:
        return (
            f"TLS to {config.host}:{config.port}: {exc.verify_message}: check"
            " mqtt.tls.ca_file and that mqtt.host is a name in the broker's certificate"
        )
    return None


def _why(exc: OSError | None) -> str:
    if exc is None:
        return "connection failed"
    if isinstance(exc, TimeoutError):
        return "timed out (is the address right, and the port open in the firewall?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on this port?)"
    return exc.strerror or str(exc) or type(exc).__name__


def load_broker_config(path: Path) -> BrokerConfig:
    """The ``[mqtt]`` table of a TOML file: a device profile, a trainer config, or the
    ``monitor.toml`` of a provisioned fleet; its paths are relative to the file."""
    raw = read_toml(path, ConfigFileError)
    if not isinstance(raw.get("mqtt"), dict):
        raise ConfigFileError(f"{path}: no [mqtt] table")
    try:
        table = expand_config(raw["mqtt"], path.resolve().parent, PATH_KEYS, ("mqtt",))
        return BrokerConfig.model_validate(table)
    except ValidationError as exc:
        raise ConfigFileError(validation_message(path, exc, ("mqtt",))) from exc
    except ValueError as exc:  # a path that names an unset variable
        raise ConfigFileError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    generation: int  # which connection delivered it; acks never cross connections


@dataclass(frozen=True)
class Outbound:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    expiry_s: int | None = None


Handler = Callable[[Inbound], None]


class _Outcome:
    """The fate of one MQTT message, settled by paho's on_publish (PUBACK for QoS 1)."""

    def __init__(self, accepted: bool, qos: int) -> None:
        self.accepted = accepted
        self.qos = qos
        self.ok = False
        self._done = threading.Event()

    def settle(self, ok: bool) -> None:
        self.ok = ok
        self._done.set()

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout) and self.ok

    @property
    def settled(self) -> bool:
        return self._done.is_set()


class PublishHandle:
    """The fate of one logical publish (one or more MQTT messages, e.g. chunks)."""

    def __init__(self, outcomes: list[_Outcome]) -> None:
        self._outcomes = outcomes
        self.seq: int | None = None  # the envelope's sequence number, where an endpoint sent it

    @classmethod
    def done(cls, ok: bool, qos: int = 1) -> PublishHandle:
        """A publish settled elsewhere (relayed through another process's connection)."""
        outcome = _Outcome(ok, qos)
        outcome.settle(ok)
        return cls([outcome])

    @classmethod
    def combine(cls, handles: list[PublishHandle]) -> PublishHandle:
        return cls([o for h in handles for o in h._outcomes])

    @property
    def settled(self) -> bool:
        """True once every part has its final answer (delivered, or rejected by the broker)."""
        return all(o.settled for o in self._outcomes)

    @property
    def accepted(self) -> bool:
        """False if refused at once (outbound queue full, or QoS 0 while disconnected)."""
        return all(o.accepted for o in self._outcomes)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every part was acknowledged by the broker (QoS 1) or written (QoS 0);
        False on timeout, refusal, or a broker that rejected it (MQTT 5 PUBACK reason)."""
        if not self.accepted:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        for outcome in self._outcomes:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not outcome.wait(left):
                return False
        return True


class MqttLink:
    """One MQTT client connection with its dispatcher thread."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        client_id: str,
        will: Outbound | None = None,
        on_connect: Callable[[bool], None] | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.config = config
        self.counters = counters or Counters()
        self._v5 = config.protocol == "5"
        self._on_connect_hook = on_connect
        self._handlers: list[tuple[str, int, Handler]] = []
        self._handlers_lock = threading.Lock()
        self._connected = threading.Event()  # connected and subscriptions acknowledged
        self._stopping = False
        self._pending_subscribe: int | None = None
        self._generation = 0
        self._queue: deque[Inbound | None] = deque()
        self._queue_bytes = 0
        self._queue_cv = threading.Condition()
        self._failures = 0  # connection attempts failed in a row: the backoff's exponent
        self.refusal: BrokerRefused | None = None  # set once retrying is pointless
        # Outcomes by message id; paho never reuses the id of a message still in flight. Never
        # held while calling into paho: paho calls on_publish holding its own message mutex.
        self._outcomes: dict[int, _Outcome] = {}
        self._settled_early: dict[int, bool] = {}  # on_publish that beat the registration
        self._outcomes_lock = threading.Lock()
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name=f"mqtt-dispatch-{client_id}", daemon=True
        )
        self._client = self._make_client(client_id, will)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        kwargs: dict[str, object] = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = cfg.inbound_queue_messages
            if cfg.persistent_session:
                props.SessionExpiryInterval = cfg.session_expiry_s
            kwargs = {"clean_start": not cfg.persistent_session, "properties": props}
        self._dispatcher.start()
        self._client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, **kwargs)
        self._client.loop_start()

    def stop(self, final: Outbound | None = None, timeout: float = 5.0) -> None:
        """Publish ``final`` if connected (e.g. an 'offline' status), then disconnect cleanly."""
        if final is not None and self.connected:
            self.publish(final).wait(timeout)
        self._stopping = True
        self._client.disconnect()
        # paho's thread can end on the disconnect between loop_stop's check and its join
        with contextlib.suppress(AttributeError):
            self._client.loop_stop()
        with self._queue_cv:
            self._queue.append(None)
            self._queue_cv.notify()
        if self._dispatcher.is_alive():
            self._dispatcher.join(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected with every subscription acknowledged by the broker."""
        return self._connected.wait(timeout)

    # -- traffic ------------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, qos: int, handler: Handler) -> None:
        with self._handlers_lock:
            self._handlers.append((topic_filter, qos, handler))
        if self.connected:
            self._client.subscribe(topic_filter, qos)

    def publish(self, message: Outbound) -> PublishHandle:
        info = self._client.publish(
            message.topic,
            message.payload,
            message.qos,
            message.retain,
            self._publish_properties(message.expiry_s),
        )
        # QoS 1 while disconnected is queued by paho and sent after reconnecting.
        accepted = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and message.qos > 0
        )
        outcome = _Outcome(accepted, message.qos)
        with self._outcomes_lock:
            early = self._settled_early.pop(info.mid, None)
            if accepted and early is None:
                self._outcomes[info.mid] = outcome
        if early is not None:
            outcome.settle(early)
        if not accepted:
            self.counters.inc("mqtt.publish_refused")
        return PublishHandle([outcome])

    def publish_many(self, messages: list[Outbound]) -> PublishHandle:
        return PublishHandle.combine([self.publish(m) for m in messages])

    # -- paho plumbing --------------------------------------------------------------------------

    def _make_client(self, client_id: str, will: Outbound | None) -> paho.Client:
        cfg = self.config
        kwargs: dict[str, object] = {}
        if not self._v5:
            kwargs["clean_session"] = not cfg.persistent_session
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            manual_ack=True,
            **kwargs,
        )
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        client.max_queued_messages_set(cfg.outbound_queue_messages)
        if cfg.tls is not None:
            self._configure_tls(client, cfg.tls)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.read_password())
        if will is not None:
            client.will_set(
                will.topic,
                will.payload,
                will.qos,
                will.retain,
                self._publish_properties(will.expiry_s, PacketTypes.WILLMESSAGE),
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    @staticmethod
    def _configure_tls(client: paho.Client, tls: TlsConfig) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, name)
            if path is not None and not Path(path).is_file():
                raise ConfigFileError(f"mqtt.tls.{name}: no such file {path}: fix the path")
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
        except ssl.SSLError as exc:
            files = ", ".join(
                f"{k} {v}" for k, v in tls.model_dump().items() if v and k != "insecure"
            )
            raise ConfigFileError(
                f"mqtt.tls: {files}: not usable ({exc.reason or exc}): a PEM certificate (and"
                " key) is needed, e.g. the fleet's ca.pem"
            ) from exc
        client.tls_insecure_set(tls.insecure)

    def _publish_properties(
        self, expiry_s: int | None, packet: int = PacketTypes.PUBLISH
    ) -> Properties | None:
        if not self._v5:
            return None
        props = Properties(packet)
        props.ContentType = CONTENT_TYPE
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        return props

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.counters.inc("mqtt.connect_refused")
            check = _PERMANENT_REFUSALS.get(reason_code.value)
            if check is None:
                self._retry_later(f"refused: {reason_code}")
            else:
                user = self.config.username or "(no username)"
                self._give_up(f"the broker at {self.address} refused {user}: {reason_code}:"
                              f" check {check}")  # fmt: skip
            return
        self._failures = 0
        self._generation += 1
        self.counters.inc("mqtt.connects")
        with self._handlers_lock:
            filters = [(f, q) for f, q, _ in self._handlers]
        log.info(
            "connected to %s:%s (session present: %s)",
            self.config.host,
            self.config.port,
            flags.session_present,
        )
        if filters:
            _, self._pending_subscribe = client.subscribe(filters)
        else:
            self._connected.set()
        if self._on_connect_hook is not None:
            try:
                self._on_connect_hook(flags.session_present)
            except Exception:
                self.counters.inc("mqtt.hook_errors")
                log.exception("on_connect hook failed")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [rc for rc in reason_codes if rc.is_failure]
        if refused:
            self.counters.inc("mqtt.subscribe_refused")
            log.error("broker refused subscriptions: %s", refused)
        if mid == self._pending_subscribe:
            self._connected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        ok = not reason_code.is_failure
        if not ok:
            self.counters.inc("mqtt.publish_rejected")
            log.warning("broker rejected a publish: %s", reason_code)
        with self._outcomes_lock:
            outcome = self._outcomes.pop(mid, None)
            if outcome is None:
                self._settled_early[mid] = ok
        if outcome is not None:
            outcome.settle(ok)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        # QoS 0 messages not yet written are gone; QoS 1 ones are resent after reconnecting.
        with self._outcomes_lock:
            lost = [m for m, o in self._outcomes.items() if o.qos == 0]
            for mid in lost:
                self._outcomes.pop(mid).settle(False)
        if self._stopping:
            log.info("disconnected from %s:%s", self.config.host, self.config.port)
        elif self._connected.is_set():
            self.counters.inc("mqtt.disconnects")
            log.warning(
                "disconnected from %s:%s (%s); reconnecting with backoff",
                self.config.host,
                self.config.port,
                reason_code,
            )
        self._connected.clear()

    def _on_connect_fail(self, client, userdata) -> None:
        self.counters.inc("mqtt.connect_failures")
        exc = client.last_error
        permanent = None
        if self.counters.get("mqtt.connects") == 0:  # once it worked, a failure is the network's
            permanent = _permanent(exc, self.config)
        if permanent is None:
            self._retry_later(_why(exc))
        else:
            self._give_up(permanent)

    def _retry_later(self, why: str) -> None:
        """Log each failed attempt with its reason and the backoff paho waits before the next."""
        self._failures += 1
        cfg = self.config
        delay = min(cfg.reconnect_max_s, cfg.reconnect_min_s * 2 ** (self._failures - 1))
        log.warning("cannot connect to the broker at %s: %s; retrying in %.1f s (attempt %d)",
                    self.address, why, delay, self._failures)  # fmt: skip

    def _give_up(self, why: str) -> None:
        """A refusal no retry will change: stop trying, and let the owner say it and exit."""
        if self.refusal is None:
            self.refusal = BrokerRefused(why)
            log.error("%s", why)
        threading.Thread(target=self._client.disconnect, daemon=True).start()

    def _on_message(self, client, userdata, msg: paho.MQTTMessage) -> None:
        # Runs on paho's network thread: must never block and never raise.
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self.counters.inc("mqtt.bad_topic")
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
            return
        item = Inbound(topic, msg.payload, msg.qos, msg.retain, msg.dup, msg.mid, self._generation)
        self.counters.inc("mqtt.received")
        with self._queue_cv:
            full = (
                len(self._queue) >= self.config.inbound_queue_messages
                or self._queue_bytes + len(item.payload) > self.config.inbound_queue_bytes
            )
            if full and item.qos == 0:
                self.counters.inc("mqtt.dropped_queue_full")
                return
            # QoS 1 is always queued: the broker's flow control (Receive Maximum over MQTT 5,
            # its in-flight limit over 3.1.1) bounds how many can be unacknowledged at once.
            self._queue.append(item)
            self._queue_bytes += len(item.payload)
            self._queue_cv.notify()

    def _dispatch_loop(self) -> None:
        while True:
            with self._queue_cv:
                while not self._queue:
                    self._queue_cv.wait()
                item = self._queue.popleft()
                if item is None:
                    return
                self._queue_bytes -= len(item.payload)
            self._deliver(item)

    def _deliver(self, item: Inbound) -> None:
        with self._handlers_lock:
            handlers = [h for f, _, h in self._handlers if _matches(f, item.topic)]
        for handler in handlers:
            try:
                handler(item)
            except Exception:
                self.counters.inc("mqtt.handler_errors")
                log.exception("handler failed on %s", item.topic)
        if item.qos > 0 and item.generation == self._generation:
            self._client.ack(item.mid, item.qos)


def _matches(topic_filter: str, topic: str) -> bool:
    """Whether a subscription's filter takes ``topic``; a shared subscription
    (``$share/<group>/<filter>``, MQTT 5) takes what its filter takes."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    return paho.topic_matches_sub(topic_filter, topic)
