"""One device's session in a Ray actor.

The actor runs what the single daemon runs for one device: its session (opened from its
checkpoint, so a restarted actor resumes where the last checkpoint left it, and takes the
segments its inbox holds on disk), a worker thread that steps it, and the same housekeeping
(``cloud_trainer.host``). Fronts hand it each uplink message as it came from the broker;
``deliver`` checks it as the single daemon's endpoint does (chunks reassembled here, where all
of a device's chunks arrive whichever front took them; duplicates dropped here) and returns
once a segment is on disk, so the front acknowledges it to the broker only then. What the
session sends down, the actor numbers and frames itself (one sequence of envelopes per session,
which the device's acks name) and publishes through a front's connection (``RelayedLink``).

An actor idle for ``session_idle_s`` checkpoints and leaves, as an idle session unloads in the
single daemon; a front that reaches it then gets ``SessionRetired`` and opens a new one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from dataclasses import asdict

import ray

from cloud_trainer.config import TrainerConfig
from cloud_trainer.host import SessionHost, housekeep
from cloud_trainer.memory import keep_freed_memory
from cloud_trainer.scheduler import RoundRobin
from shared_schema.cli import configure_logging
from shared_schema.endpoint import TrainerEndpoint
from shared_schema.envelope import Envelope
from shared_schema.messages import MessageType
from shared_schema.mqtt import Inbound, Outbound, PublishHandle
from shared_schema.topics import Topic

log = logging.getLogger(__name__)

SESSION_PREFIX = "ams-session:"  # + device id: a session actor's name in the namespace
FRONT_PREFIX = "ams-front:"  # + its number: a front's
FORWARDED = (MessageType.HELLO, MessageType.SEGMENT, MessageType.ACK)  # what the session takes
RELAY_ATTEMPTS = 4  # fronts tried before a message down is given up (the session offers again)
RELAY_TIMEOUT_S = 30.0


class SessionRetired(Exception):
    """The device's session was idle: it is checkpointed and its actor is leaving."""


def actor_name(device_id: str) -> str:
    return SESSION_PREFIX + device_id


class RelayedLink:
    """A session actor's way to the broker: a front's connection (the broker gives a login one
    connection, so the fronts' are the trainer's). The front is picked by the device id, and
    another one when it is gone. Publishing returns once the front's link has taken the
    message (QoS 1 queues while it reconnects, as on a link of one's own)."""

    connected = True
    refusal = None

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id
        self._front: object | None = None

    def start(self) -> None:
        """Nothing to connect: the fronts are."""

    def stop(self, final: Outbound | None = None, timeout: float = 5.0) -> None:
        """Nothing to disconnect."""

    def wait_connected(self, timeout: float | None = None) -> bool:
        return True

    def publish(self, message: Outbound) -> PublishHandle:
        return self.publish_many([message])

    def publish_many(self, messages: list[Outbound]) -> PublishHandle:
        for attempt in range(RELAY_ATTEMPTS):
            front = self._front or self._pick()
            if front is not None:
                try:
                    taken = ray.get(front.publish.remote(messages), timeout=RELAY_TIMEOUT_S)
                    return PublishHandle.done(taken, messages[0].qos)
                except ray.exceptions.RayError:  # gone, timed out, or failed: another front
                    self._front = None
            time.sleep(0.5 * 2**attempt)
        log.warning("%s: no front took a message down (%s): the session offers it again",
                    self._device_id, messages[0].topic)  # fmt: skip
        return PublishHandle.done(False, messages[0].qos)

    def _pick(self) -> object | None:
        fronts = sorted(n for n in ray.util.list_named_actors() if n.startswith(FRONT_PREFIX))
        if not fronts:
            return None
        name = fronts[zlib.crc32(self._device_id.encode()) % len(fronts)]
        try:
            self._front = ray.get_actor(name)
        except ValueError:  # it left in between
            return None
        return self._front


class SessionActor:
    def __init__(self, config: TrainerConfig, device_id: str) -> None:
        configure_logging(logging.INFO)
        keep_freed_memory()  # a worker process of Ray's, not the command's
        self.device_id = device_id
        self.endpoint = TrainerEndpoint(config.mqtt, trainer_id=config.trainer_id,
                                        subscriptions=[], link=RelayedLink(device_id))  # fmt: skip
        self.host = SessionHost(config, self.endpoint)
        self.session = self.host.open(device_id)
        self._idle_s = config.session_idle_s
        self._lock = threading.Lock()  # deliveries against retiring
        self._heard = time.monotonic()
        self._retired = False
        self._phase = False  # a training phase is running (for tests: to kill it mid-phase)
        for msg_type in FORWARDED:
            self.endpoint.on(msg_type, self._take)
        self.scheduler = RoundRobin(self._step)
        self._stop = threading.Event()
        self.endpoint.start()
        for target, name in ((self.scheduler.run, "scheduler"), (self._housekeep, "housekeeping")):
            threading.Thread(target=target, name=name, daemon=True).start()
        self.scheduler.notify(device_id)  # a resumed session offers the device its latest

    # -- from the fronts -----------------------------------------------------------------------

    def deliver(self, topic: str, payload: bytes) -> None:
        """One uplink message as the broker delivered it to a front; a whole segment is on disk
        when this returns (a chunk of one waits in memory until its message is whole, as in the
        single daemon). Raises SessionRetired once the actor is leaving."""
        with self._lock:
            if self._retired:
                raise SessionRetired(self.device_id)
            self._heard = time.monotonic()
            self.endpoint.receive(Inbound(topic, payload, 1, False, False, 0, 0))

    def _take(self, envelope: Envelope, topic: Topic) -> None:
        self.session.deliver(envelope)
        self.scheduler.notify(self.device_id)

    # -- for operators, benchmarks and tests ---------------------------------------------------

    def view(self) -> dict[str, object]:
        """What the session did: its stats, mirror, phase ends (time.monotonic(), which on one
        machine is comparable across processes) and counters."""
        session = self.session
        return {
            "stats": asdict(session.stats),
            "mirror_sha256": session.mirror.sha256,
            "mirror_version": session.mirror.version,
            "phase_ends": list(session.phase_ends),
            "t_update_s": session.atr.t_update_s,
            "has_work": session.has_work or not self.scheduler.idle,
            "in_phase": self._phase,
            "counters": self.endpoint.counters.snapshot(),
            "pid": os.getpid(),
        }

    # -- the worker side -----------------------------------------------------------------------

    def _step(self, device_id: str) -> bool:
        self._phase = self.session.trains_next
        try:
            self.host.step(self.session)
        finally:
            self._phase = False
        return self.session.has_work

    def _housekeep(self) -> None:
        def every_second() -> None:
            if self.session.has_work:
                self.scheduler.notify(self.device_id)
            self.scheduler.call(self._retire_if_idle)

        def checkpoint() -> None:
            self.scheduler.call(lambda: self.host.save(self.session))

        housekeep(self._stop, self.host.config, every_second=every_second,
                  checkpoint=checkpoint, report=lambda: self.host.report(self.session))  # fmt: skip

    def _retire_if_idle(self) -> None:
        """On the worker: checkpoint an idle session and leave (its next message opens it again,
        in a new actor)."""
        with self._lock:
            idle = time.monotonic() - self._heard >= self._idle_s
            if not idle or self.session.has_queued_work:
                return
            self._retired = True
        self._stop.set()
        self.scheduler.stop()
        self.host.save(self.session)
        self.host.close()
        self.endpoint.stop()
        log.info("%s: idle: session checkpointed, actor leaving", self.device_id)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
