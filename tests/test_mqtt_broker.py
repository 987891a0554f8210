"""The protocol over a real mosquitto broker, secured as a fleet's is (TLS, a login per client,
the ACL: tests/test_fleet.py): delivery, redelivery, last will, restarts, chunking."""

from __future__ import annotations

import queue
import signal
import time

import pytest

from shared_schema.endpoint import DeviceEndpoint, TrainerEndpoint
from shared_schema.envelope import Limits, encode
from shared_schema.messages import (
    Control,
    Hello,
    MessageType,
    Model,
    Segment,
    Telemetry,
)
from shared_schema.mqtt import MqttLink, Outbound
from tests.broker import Mosquitto
from tests.mqtt_helpers import Inbox, start_peer, wait_until
from tests.samples import DOWNLINK, UPLINK

pytestmark = pytest.mark.broker
PROTOCOLS = ["5", "3.1.1"]


def _segment(i: int) -> Segment:
    return Segment(
        width=64, height=64, timestamps=(float(i),), sampling_rate_fps=1.0, bitrate_kbps=200.0
    )


def _telemetry(i: int) -> Telemetry:
    return Telemetry(
        uptime_s=float(i),
        fps=30.0,
        latency_p50_ms=1.0,
        latency_p95_ms=2.0,
        frames=i,
        frames_sampled=0,
        swaps=0,
        bytes_up=0,
        bytes_down=0,
        spool_depth=0,
    )


def _started(endpoint, stop_later):
    stop_later(endpoint)
    endpoint.start()
    assert endpoint.wait_connected(10), "endpoint did not connect"
    return endpoint


def _statuses(trainer: TrainerEndpoint) -> queue.Queue:
    """(device id, online) of each status the trainer hears, in order."""
    heard: queue.Queue = queue.Queue()
    trainer.on_status(lambda device_id, online: heard.put((device_id, online)))
    return heard


def _cam_1(broker, protocol: str) -> DeviceEndpoint:
    """Device cam-1, logged in as itself."""
    return DeviceEndpoint(broker.client_config("cam-1", protocol=protocol), "cam-1")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_message_type_crosses_the_broker(broker, protocol, stop_later):
    trainer = TrainerEndpoint(broker.client_config(protocol=protocol))
    device = _cam_1(broker, protocol)
    to_trainer, to_device = Inbox(trainer), Inbox(device)
    statuses = _statuses(trainer)
    _started(trainer, stop_later)
    _started(device, stop_later)
    assert statuses.get(timeout=10) == ("cam-1", True)

    for msg, body in UPLINK:
        assert device.send(msg, body).wait(5)
        env, topic = to_trainer.get()
        assert (env.msg, env.body, topic.device_id) == (msg, body, "cam-1")
        assert topic.type == MessageType(msg.type)

    for msg, body in DOWNLINK:
        assert trainer.send("cam-1", msg, body).wait(5)
        env, topic = to_device.get()
        assert (env.msg, env.body, env.device_id) == (msg, body, "trainer")

    device.stop()
    assert statuses.get(timeout=10) == ("cam-1", False)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_qos1_messages_wait_for_a_disconnected_subscriber(broker, protocol, stop_later):
    trainer_cfg = broker.client_config(protocol=protocol, client_id="trainer-a")
    first = TrainerEndpoint(trainer_cfg)
    first.start()
    assert first.wait_connected(10)
    first.stop()

    device = _started(_cam_1(broker, protocol), stop_later)
    for i in range(5):
        assert device.send(_segment(i)).wait(5)

    again = TrainerEndpoint(trainer_cfg)
    inbox = Inbox(again, [MessageType.SEGMENT])
    _started(again, stop_later)
    got = [inbox.get()[0].msg.timestamps[0] for _ in range(5)]
    assert got == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unacknowledged_message_is_redelivered_after_a_crash(broker, protocol, stop_later):
    peer = start_peer("stuck-trainer", broker, "trainer-b", protocol)
    try:
        device = _started(_cam_1(broker, protocol), stop_later)
        assert device.send(_segment(42)).wait(5)
        assert peer.stdout.readline().startswith("got ")  # handled, never acknowledged
    finally:
        peer.send_signal(signal.SIGKILL)
        peer.wait()

    again = TrainerEndpoint(broker.client_config(protocol=protocol, client_id="trainer-b"))
    inbox = Inbox(again, [MessageType.SEGMENT])
    _started(again, stop_later)
    env, _ = inbox.get()
    assert env.msg.timestamps == (42.0,)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_last_will_announces_a_killed_device(broker, protocol, stop_later):
    trainer = TrainerEndpoint(broker.client_config(protocol=protocol))
    statuses = _statuses(trainer)
    _started(trainer, stop_later)

    peer = start_peer("device", broker, "cam-9", protocol)
    assert statuses.get(timeout=10) == ("cam-9", True)
    peer.send_signal(signal.SIGKILL)
    peer.wait()
    assert statuses.get(timeout=30) == ("cam-9", False)

    # Retained, and plain text: anyone who subscribes later reads "offline" as it is.
    plain = queue.Queue()
    late = MqttLink(broker.client_config("monitor", protocol=protocol,
                                         persistent_session=False), client_id="late")  # fmt: skip
    late.subscribe("ams/cam-9/status", 1, lambda m: plain.put((m.payload, m.retain)))
    stop_later(late).start()
    assert plain.get(timeout=10) == (b"offline", True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_both_sides_recover_from_a_broker_restart(broker, protocol, stop_later):
    trainer = TrainerEndpoint(broker.client_config(protocol=protocol))
    device = _cam_1(broker, protocol)
    to_trainer = Inbox(trainer, [MessageType.SEGMENT])
    to_device = Inbox(device, [MessageType.CONTROL])
    _started(trainer, stop_later)
    _started(device, stop_later)
    assert device.send(_segment(1)).wait(5)
    assert to_trainer.get()[0].msg.timestamps == (1.0,)

    broker.stop()
    wait_until(
        lambda: not device.link.connected and not trainer.link.connected,
        what="both clients to notice the broker is gone",
    )
    during = device.send(_segment(2))  # queued while the broker is down
    assert during.accepted
    broker.start()

    assert device.wait_connected(15) and trainer.wait_connected(15)
    assert during.wait(10)
    assert to_trainer.get()[0].msg.timestamps == (2.0,)
    control = Control(sampling_rate_fps=0.5, t_update_s=10.0)
    assert trainer.send("cam-1", control).wait(5)
    assert to_device.get()[0].msg == control
    assert device.counters.get("mqtt.connects") == 2
    assert trainer.counters.get("mqtt.connects") == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_slow_consumer_never_blocks_the_network_loop(broker, protocol, stop_later):
    cfg = broker.client_config(protocol=protocol, inbound_queue_messages=4, keepalive_s=5)
    trainer = TrainerEndpoint(cfg)
    handled: list[float] = []

    def slow(env, topic):
        time.sleep(0.25)
        handled.append(env.msg.timestamps[0])

    trainer.on(MessageType.SEGMENT, slow)
    _started(trainer, stop_later)
    device = _started(_cam_1(broker, protocol), stop_later)
    for i in range(12):
        device.send(_segment(i))
    wait_until(lambda: len(handled) >= 1, what="the first segment")
    # The dispatcher is busy for seconds; the network loop still completes a QoS 1 publish.
    started = time.monotonic()
    assert trainer.send("cam-1", Control(sampling_rate_fps=1.0, t_update_s=10.0)).wait(1.0)
    assert time.monotonic() - started < 1.0
    for i in range(50):
        device.send(_telemetry(i))  # QoS 0 beyond the queue bound is dropped, and counted
    wait_until(lambda: len(handled) == 12, timeout=20, what="all segments")
    assert handled == [float(i) for i in range(12)]
    assert trainer.counters.get("mqtt.dropped_queue_full") > 0
    assert trainer.counters.get("mqtt.disconnects") == 0


def test_malformed_payloads_are_rejected_and_counted(broker, stop_later):
    trainer = TrainerEndpoint(
        broker.client_config(), limits=Limits(body_bytes={MessageType.SEGMENT: 1000})
    )
    inbox = Inbox(trainer, [MessageType.SEGMENT, MessageType.HELLO])
    _started(trainer, stop_later)
    raw = MqttLink(broker.client_config("cam-1"), client_id="raw")  # cam-1's own login
    raw.start()
    assert raw.wait_connected(10)

    seqs = iter(range(1000))

    def frame(msg, device_id="cam-1", body=b""):
        return encode(msg, device_id=device_id, seq=next(seqs), boot="0" * 16, body=body)

    good = frame(_segment(7), body=b"h264")
    attacks = {
        "bad_magic": ("ams/cam-1/up/segment", b"\x00" * 64),
        "truncated": ("ams/cam-1/up/segment", good[:-2]),
        "oversize": ("ams/cam-1/up/segment", frame(_segment(1), body=bytes(5000))),
        "wrong_device": ("ams/cam-1/up/segment", frame(_segment(1), device_id="cam-2")),
        "wrong_type": (
            "ams/cam-1/up/segment",
            frame(Control(sampling_rate_fps=1.0, t_update_s=1.0)),
        ),
        "bad_topic": ("ams/cam-1/up/bogus", good),
        "bad_header": ("ams/cam-1/up/segment", good[:8] + b"[" + good[9:]),
    }
    for topic, payload in attacks.values():
        assert raw.publish(Outbound(topic, payload, qos=1)).wait(5)
    assert raw.publish(Outbound("ams/cam-1/up/segment", good, qos=1)).wait(5)
    env, _ = inbox.get()
    assert env.msg.timestamps == (7.0,) and env.body == b"h264"
    for reason in attacks:
        assert trainer.counters.get(f"rejected.{reason}") == 1, reason
    # A QoS 1 duplicate of an accepted message is dropped silently.
    assert raw.publish(Outbound("ams/cam-1/up/segment", good, qos=1)).wait(5)
    hello = frame(
        Hello(
            profile="cpu", device_class="cpu", runtime_version="0", backend="x", input_size=(8, 8)
        )
    )
    assert raw.publish(Outbound("ams/cam-1/up/hello", hello, qos=1)).wait(5)
    assert inbox.get()[0].type == MessageType.HELLO
    assert trainer.counters.get("duplicates") == 1
    assert trainer.link.connected
    raw.stop()


@pytest.fixture
def capped_broker(tmp_path, fleet):
    server = Mosquitto(tmp_path / "capped", fleet=fleet, extra_conf="max_packet_size 65536")
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_large_model_is_chunked_through_a_capped_broker(capped_broker, protocol, stop_later):
    settings = {"protocol": protocol, "max_message_bytes": 60_000}
    trainer = _started(TrainerEndpoint(capped_broker.client_config(**settings)), stop_later)
    device = DeviceEndpoint(capped_broker.client_config("cam-1", **settings), "cam-1")
    inbox = Inbox(device, [MessageType.MODEL])
    _started(device, stop_later)
    body = bytes(range(256)) * 4096  # 1 MiB
    assert trainer.send("cam-1", Model(version=1), body).wait(20)
    env, _ = inbox.get(timeout=20)
    assert env.body == body and env.msg.version == 1
    assert device.counters.get("received.model") == 1


@pytest.mark.broker
def test_a_status_that_is_not_online_or_offline_is_counted_and_dropped(broker, stop_later):
    trainer = TrainerEndpoint(broker.client_config())
    statuses = _statuses(trainer)
    _started(trainer, stop_later)
    liar = stop_later(MqttLink(broker.client_config("cam-1"), client_id="cam-1"))
    liar.start()
    assert liar.wait_connected(10)
    for payload in (b"maybe", b"ONLINE", b"\xff" * 9, b"online "):
        assert liar.publish(Outbound("ams/cam-1/status", payload, 1)).wait(5)
    assert liar.publish(Outbound("ams/cam-1/status", b"online", 1)).wait(5)
    assert statuses.get(timeout=10) == ("cam-1", True)  # the only one handed on
    assert statuses.empty()
    wait_until(lambda: trainer.counters.get("rejected.wrong_type") == 4, 5, "4 rejections")
