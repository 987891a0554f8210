"""How segments leave the device: through the on-disk spool, in order, once each.

A segment is framed as an envelope and written to the spool before anything is sent, so a
segment accepted by ``submit`` survives a broker outage and a restart of the runtime. A sender
thread publishes the oldest entry and deletes it only after the broker acknowledged it (QoS 1
PUBACK). Across a reconnect it keeps waiting on the same publish (paho resends it), so an outage
does not duplicate it; only a restart of the runtime re-publishes the entry that was in flight,
with its original sequence number, which the trainer drops as a QoS 1 duplicate.
"""

from __future__ import annotations

import logging
import threading

from edge_runtime.spool import Spool, SpoolEntry
from shared_schema.counters import Counters
from shared_schema.endpoint import DeviceEndpoint
from shared_schema.messages import MessageType, Segment
from shared_schema.topics import Direction

log = logging.getLogger(__name__)


class Uplink:
    def __init__(
        self, endpoint: DeviceEndpoint, spool: Spool, counters: Counters | None = None
    ) -> None:
        self._endpoint = endpoint
        self._spool = spool
        self.counters = counters or endpoint.counters
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)

    @property
    def depth(self) -> int:
        return len(self._spool)

    def start(self) -> None:
        self._thread.start()

    def submit(self, segment: Segment, h264: bytes) -> None:
        """Accept one segment: durable on disk when this returns."""
        self._spool.put(MessageType.SEGMENT, self._endpoint.encode(segment, h264))
        self.counters.inc("uplink.segments_accepted")
        self._idle.clear()
        self._wake.set()

    def drain(self, timeout: float) -> bool:
        """Wait until the spool is empty (everything acknowledged by the broker)."""
        return self._idle.wait(timeout) if self.depth else True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending; what is still spooled is sent after the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            entry = self._spool.oldest()
            if entry is None:
                self._idle.set()
                self._wake.wait(1.0)
                self._wake.clear()
            elif not self._endpoint.wait_connected(1.0):
                continue
            else:
                self._send(entry)

    def _send(self, entry: SpoolEntry) -> None:
        try:
            payload = entry.read()
        except OSError:
            return  # evicted meanwhile to respect the spool bounds
        handle = self._endpoint.publish_encoded(
            self._endpoint.device_id, entry.msg_type, payload, Direction.UP
        )
        while not handle.wait(1.0):
            if self._stop.is_set():
                return
            if not handle.accepted:
                self._stop.wait(1.0)  # paho's outbound queue is full: try again shortly
                return
            if handle.settled:
                # The broker refused it (e.g. an ACL): resending cannot help.
                self.counters.inc("uplink.rejected_by_broker")
                log.error("broker refused segment %s; dropping it", entry.path.name)
                self._spool.remove(entry)
                return
        self._spool.remove(entry)
        self.counters.inc("uplink.segments_sent")
        self.counters.inc("uplink.bytes_sent", entry.size)


class NullUplink:
    """Where segments go without a broker (benchmarks): counted, then discarded."""

    depth = 0

    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters or Counters()

    def start(self) -> None:
        pass

    def submit(self, segment: Segment, h264: bytes) -> None:
        self.counters.inc("uplink.segments_accepted")
        self.counters.inc("uplink.bytes_sent", len(h264))

    def drain(self, timeout: float) -> bool:
        return True

    def stop(self, timeout: float = 5.0) -> None:
        pass
