"""Small helpers for tests that talk through the real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cloud_trainer.fleet.provision import TRAINER
from cloud_trainer.tools.local_broker import LocalBroker
from shared_schema.endpoint import Endpoint
from shared_schema.envelope import Envelope
from shared_schema.messages import MessageType
from shared_schema.topics import Topic

ROOT = Path(__file__).resolve().parents[1]


class Inbox:
    """Collects every message an endpoint receives; lookups take the first match and leave
    the rest for later lookups."""

    def __init__(self, endpoint: Endpoint, types: list[MessageType] | None = None) -> None:
        self._items: list[tuple[Envelope, Topic]] = []
        self._cond = threading.Condition()
        for msg_type in types or list(MessageType):
            endpoint.on(msg_type, self._put)

    def _put(self, envelope: Envelope, topic: Topic) -> None:
        with self._cond:
            self._items.append((envelope, topic))
            self._cond.notify_all()

    def get(
        self, timeout: float = 10.0, where: Callable[[Envelope], bool] | None = None
    ) -> tuple[Envelope, Topic]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, item in enumerate(self._items):
                    if where is None or where(item[0]):
                        return self._items.pop(i)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("no matching message arrived in time")
                self._cond.wait(remaining)

    def of_type(self, msg_type: MessageType, timeout: float = 10.0) -> tuple[Envelope, Topic]:
        return self.get(timeout, lambda env: env.type == msg_type)

    def drain(self, wait_s: float = 0.5) -> list[Envelope]:
        time.sleep(wait_s)
        with self._cond:
            items, self._items = self._items, []
        return [envelope for envelope, _ in items]


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_peer(role: str, broker: LocalBroker, name: str, protocol: str) -> subprocess.Popen[str]:
    """Start tests/peers/mqtt_peer.py on ``broker`` (logged in as ``name`` for a device, as the
    trainer otherwise) and wait for its 'ready' line."""
    identity = name if role == "device" else TRAINER
    table = json.dumps({**broker.mqtt_table(identity), "protocol": protocol, "client_id": name})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.mqtt_peer", role, name, table],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if line != "ready":
        proc.kill()
        raise AssertionError(
            f"peer failed to start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
    return proc
