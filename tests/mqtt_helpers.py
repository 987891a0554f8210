"""Small helpers for tests that talk through the real broker."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared_schema.endpoint import Endpoint
from shared_schema.envelope import Envelope
from shared_schema.messages import MessageType
from shared_schema.topics import Topic

ROOT = Path(__file__).resolve().parents[1]


class Inbox:
    """Collects every message an endpoint receives, for assertions."""

    def __init__(self, endpoint: Endpoint, types: list[MessageType] | None = None) -> None:
        self._queue: queue.Queue[tuple[Envelope, Topic]] = queue.Queue()
        for msg_type in types or list(MessageType):
            endpoint.on(msg_type, lambda env, topic: self._queue.put((env, topic)))

    def get(
        self, timeout: float = 10.0, where: Callable[[Envelope], bool] | None = None
    ) -> tuple[Envelope, Topic]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no matching message arrived in time")
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty as exc:
                raise AssertionError("no matching message arrived in time") from exc
            if where is None or where(item[0]):
                return item

    def of_type(self, msg_type: MessageType, timeout: float = 10.0) -> tuple[Envelope, Topic]:
        return self.get(timeout, lambda env: env.type == msg_type)

    def drain(self, wait_s: float = 0.5) -> list[Envelope]:
        time.sleep(wait_s)
        items = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait()[0])
        return items


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_peer(*args: str) -> subprocess.Popen[str]:
    """Start tests/peers/mqtt_peer.py and wait for its 'ready' line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.mqtt_peer", *args],
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
