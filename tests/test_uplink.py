"""The segment uplink over the real broker: outages and restarts lose and duplicate nothing."""

from __future__ import annotations

import pytest

from edge_runtime.spool import Spool
from edge_runtime.uplink import Uplink
from shared_schema.endpoint import DeviceEndpoint, TrainerEndpoint
from shared_schema.messages import MessageType, Segment
from shared_schema.topics import Direction
from tests.mqtt_helpers import Inbox, wait_until

pytestmark = pytest.mark.broker


def _segment(i: int) -> Segment:
    return Segment(
        width=64, height=64, timestamps=(float(i),), sampling_rate_fps=1.0, bitrate_kbps=200.0
    )


class Device:
    """An endpoint, a spool and an uplink, as the runtime wires them."""

    def __init__(self, broker, spool_dir, **spool_limits):
        self.endpoint = DeviceEndpoint(broker.client_config("cam-1"), "cam-1")
        limits = {"max_bytes": 1 << 24, "max_entries": 1000} | spool_limits
        spool = Spool(spool_dir, counters=self.endpoint.counters, **limits)
        self.uplink = Uplink(self.endpoint, spool)
        self.endpoint.start()
        self.uplink.start()

    def stop(self):
        self.uplink.stop()
        self.endpoint.stop(timeout=1.0)


@pytest.fixture
def trainer(broker):
    endpoint = TrainerEndpoint(broker.client_config())
    inbox = Inbox(endpoint, [MessageType.SEGMENT])
    endpoint.start()
    assert endpoint.wait_connected(10)
    yield endpoint, inbox
    endpoint.stop(timeout=1.0)


def _received(inbox, n):
    return [inbox.get(timeout=15)[0].msg.timestamps[0] for _ in range(n)]


def test_segments_flow_in_order(broker, trainer, tmp_path):
    _, inbox = trainer
    device = Device(broker, tmp_path)
    for i in range(5):
        device.uplink.submit(_segment(i), b"h264" * i)
    assert _received(inbox, 5) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert device.uplink.drain(10)
    assert device.uplink.depth == 0
    device.stop()


def test_broker_outage_spools_then_sends_in_order(broker, trainer, tmp_path):
    _, inbox = trainer
    device = Device(broker, tmp_path)
    device.uplink.submit(_segment(0), b"x")
    assert _received(inbox, 1) == [0.0]
    broker.stop()
    wait_until(lambda: not device.endpoint.link.connected, what="the device to see the outage")
    for i in range(1, 6):
        device.uplink.submit(_segment(i), b"x")
    assert device.uplink.depth >= 4
    broker.start()
    assert _received(inbox, 5) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert device.uplink.drain(10)
    # Nothing twice: a segment in flight when the broker died may cross the wire again (QoS 1
    # is at-least-once), but the trainer's handler sees it once.
    assert inbox.drain(1.0) == []
    device.stop()


def test_spooled_segments_survive_a_runtime_restart(broker, trainer, tmp_path):
    trainer_endpoint, inbox = trainer
    broker.stop()
    first = Device(broker, tmp_path)
    for i in range(4):
        first.uplink.submit(_segment(i), b"x")
    first.stop()  # the runtime exits with the broker unreachable

    broker.start()
    assert trainer_endpoint.wait_connected(15)
    second = Device(broker, tmp_path)
    second.uplink.submit(_segment(4), b"x")
    assert _received(inbox, 5) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert second.uplink.drain(10)
    assert inbox.drain(1.0) == []
    second.stop()


def test_resend_after_a_crash_is_dropped_as_a_duplicate(broker, trainer, tmp_path):
    """An entry the broker got but the device never deleted (a crash in between) is sent
    again after restart with its original sequence number; the trainer drops the copy."""
    trainer_endpoint, inbox = trainer
    device = Device(broker, tmp_path)
    device.uplink.stop()  # no sender: entries stay in the spool
    device.uplink.submit(_segment(7), b"x")
    entry = device.uplink._spool.oldest()
    assert device.endpoint.wait_connected(10)
    handle = device.endpoint.publish_encoded(
        "cam-1", MessageType.SEGMENT, entry.read(), Direction.UP
    )
    assert handle.wait(5)
    assert _received(inbox, 1) == [7.0]
    device.endpoint.stop(timeout=1.0)

    restarted = Device(broker, tmp_path)
    assert restarted.uplink.drain(10)
    wait_until(
        lambda: trainer_endpoint.counters.get("duplicates") == 1,
        what="the resent copy to be dropped",
    )
    assert inbox.drain(0.5) == []
    restarted.stop()


def test_full_spool_drops_oldest_first_and_counts(broker, trainer, tmp_path):
    _, inbox = trainer
    broker.stop()
    device = Device(broker, tmp_path, max_entries=3)
    for i in range(6):
        device.uplink.submit(_segment(i), b"x")
    assert device.uplink.depth == 3
    assert device.uplink.counters.get("spool.dropped") == 3
    broker.start()
    assert _received(inbox, 3) == [3.0, 4.0, 5.0]
    device.stop()
