"""``cloud-trainer serve``: Adaptive Model Streaming for every device on the broker.

The MQTT dispatcher hands each device's messages to its session (creating sessions on a
worker, never on the network side); one worker thread runs the round-robin scheduler, which
gives each session one step at a time, and is the only thread that touches session state
(checkpoints included). A session is in memory while its device is active: one that has heard
nothing for ``session_idle_s`` is checkpointed and unloaded, and comes back from its checkpoint
when the device speaks again; ``max_sessions`` bounds the sessions in memory, so devices that
go quiet (or ids that never come back) cannot lock others out. A housekeeping thread wakes
sessions whose deferred work is due, unloads idle ones and reports metrics: on the log, as
retained MQTT messages, and to Prometheus when a port is set.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path

from cloud_trainer.config import TrainerConfig
from cloud_trainer.dashboard.actions import Action, ActionRefused
from cloud_trainer.dashboard.state import ActionEntry, FleetState
from cloud_trainer.host import SessionHost, checkpointed, housekeep, recently_active
from cloud_trainer.prometheus import TrainerMetrics
from cloud_trainer.recl.scheduler import REASONS, MarginalGain
from cloud_trainer.scheduler import RoundRobin
from cloud_trainer.session import Session, open_inbox, store_segment
from edge_runtime.spool import Spool
from shared_schema.endpoint import TrainerEndpoint
from shared_schema.envelope import Envelope
from shared_schema.messages import MessageType, Telemetry
from shared_schema.metrics import label_names
from shared_schema.topics import Topic

log = logging.getLogger(__name__)


class TrainerDaemon:
    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.endpoint = TrainerEndpoint(config.mqtt, trainer_id=config.trainer_id)
        self.host = SessionHost(config, self.endpoint)
        self.sessions: dict[str, Session] = {}  # in memory: the active ones
        self._heard: dict[str, float] = {}  # device -> time.monotonic() of its last message
        self._waiting: dict[str, list[Envelope]] = {}  # admitted: hellos, acks before its session
        self._inboxes: dict[str, Spool] = {}  # admitted: segments on disk before its session
        self._lock = threading.Lock()
        self._gains = MarginalGain(config.recl.max_wait)
        marginal = config.recl.scheduler == "marginal-gain"
        self.scheduler = RoundRobin(self._step, self._choose if marginal else None)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.metrics = TrainerMetrics()
        # the dashboard's view of the fleet, where [dashboard] port is set; its server starts
        # with the daemon
        self.fleet: FleetState | None = None
        self.dashboard = None
        if config.dashboard.enabled:
            from cloud_trainer.dashboard import serve  # the web stack only where it is used

            actions_log = self.checkpoint_dir / "_actions.jsonl"  # no device id starts with _
            labels = config.student.labels
            names = label_names(labels) if labels else None
            self.fleet = FleetState(config.dashboard.history, actions_log, names)
            self.dashboard = serve.server(config.dashboard, self.fleet, self.act,
                                          self.endpoint.counters)  # fmt: skip

    @property
    def checkpoint_dir(self) -> Path:
        return self.config.checkpoint.directory

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.metrics.serve(self.config.metrics)
        self._resume_active()
        if self.dashboard is not None:
            assert self.fleet is not None
            self.fleet.known(self._checkpointed())
            self.dashboard.start()
        for msg_type in (MessageType.HELLO, MessageType.SEGMENT, MessageType.ACK):
            self.endpoint.on(msg_type, self._deliver)
        self.endpoint.on(MessageType.TELEMETRY, self._telemetry)
        self.endpoint.on_status(self._status)
        self.endpoint.start()
        for target, name in ((self.scheduler.run, "scheduler"), (self._housekeep, "housekeeping")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the step in progress, checkpoint every session, disconnect."""
        if self.dashboard is not None:  # first: no action is accepted that would never run
            self.dashboard.stop()
        self._stop.set()
        self.scheduler.stop()
        for thread in self._threads:
            thread.join(timeout)
        self._save_all()
        self.host.close()
        self.endpoint.stop()

    @property
    def refusal(self) -> str | None:
        """Why the broker refused the trainer for good (a login or TLS to fix), if it did."""
        refusal = self.endpoint.link.refusal
        return None if refusal is None else str(refusal)

    def wait_idle(self, timeout: float) -> bool:
        """True once no session has work queued (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = self._waiting or any(s.has_work for s in self.sessions.values())
            if not busy and self.scheduler.idle:
                return True
            time.sleep(0.05)
        return False

    # -- the MQTT side -------------------------------------------------------------------------

    def _deliver(self, envelope: Envelope, topic: Topic) -> None:
        """Hand a message to its device's session; a segment is on disk when this returns, so
        the broker's QoS 1 acknowledgement (after the handler) comes only once it is."""
        device_id = topic.device_id
        with self._lock:
            session = self.sessions.get(device_id)
            if session is not None:
                session.deliver(envelope)
            elif not self._admits(device_id):
                self.endpoint.counters.inc("trainer.sessions_refused")
                return
            elif envelope.type == MessageType.SEGMENT:  # its session takes it from the inbox
                store_segment(self._inbox(device_id), envelope)
                self._waiting.setdefault(device_id, [])
            else:
                self._wait(device_id, envelope)
            self._heard[device_id] = time.monotonic()
        self.scheduler.notify(device_id)

    def _inbox(self, device_id: str) -> Spool:
        if device_id not in self._inboxes:
            self._inboxes[device_id] = open_inbox(self.host.directory(device_id), self.config)
        return self._inboxes[device_id]

    def _wait(self, device_id: str, envelope: Envelope) -> None:
        """Hold a hello or ack until the session exists; bounded as its own queue will be."""
        waiting = self._waiting.setdefault(device_id, [])
        waiting.append(envelope)
        if len(waiting) > self.config.max_pending_events:
            del waiting[0]
            self.endpoint.counters.inc("trainer.waiting_dropped")

    def _admits(self, device_id: str) -> bool:
        """A device already admitted (waiting for its session) or room for one more."""
        in_memory = len(self.sessions) + len(self._waiting)
        return device_id in self._waiting or in_memory < self.config.max_sessions

    def _status(self, device_id: str, online: bool) -> None:
        self.metrics.online(device_id, online)
        if self.fleet is not None:
            self.fleet.status(device_id, online)

    def _telemetry(self, envelope: Envelope, topic: Topic) -> None:
        assert isinstance(envelope.msg, Telemetry)
        self.metrics.telemetry(topic.device_id, envelope.msg)
        if self.fleet is not None:
            self.fleet.telemetry(topic.device_id, envelope.msg)

    # -- the worker side -----------------------------------------------------------------------

    def _step(self, device_id: str) -> bool:
        session = self._session(device_id)
        self.host.step(session)
        self._show(session)
        return session.has_work

    def _show(self, session: Session) -> None:
        """Hand the dashboard what the session did (the records go either way: bounded)."""
        records = session.drain()
        if self.fleet is not None:
            self.fleet.session(session.metrics(), records)

    # -- operators' actions (the dashboard) ------------------------------------------------------

    def act(self, device_id: str, action: Action, entry: ActionEntry) -> None:
        """Run an operator's action on the worker, between two steps (as any session work)."""
        self.scheduler.call(lambda: self._act(device_id, action, entry))

    def _act(self, device_id: str, action: Action, entry: ActionEntry) -> None:
        assert self.fleet is not None
        with self._lock:
            room = device_id in self.sessions or self._admits(device_id)
        if not room:
            detail = f"the trainer holds max_sessions ({self.config.max_sessions}) sessions"
            self.fleet.action_done(entry, "refused", detail + ": try again when one is idle")
            return
        try:
            session = self._session(device_id)
            done, messages = session.act(action)
        except ActionRefused as exc:
            self.fleet.action_done(entry, "refused", str(exc))
            return
        except Exception as exc:  # a bug: logged with its traceback, shown as failed
            log.exception("%s: action %s failed", device_id, action)
            self.fleet.action_done(entry, "failed", f"{type(exc).__name__}: {exc}")
            return
        for outgoing in messages:
            self.host.send(session, outgoing)
        self.host.save(session)  # a pause or bounds survive a restart from now on
        self.fleet.action_done(entry, "done", done)
        self._show(session)

    def _choose(self, queued: list[str]) -> str:
        """The marginal-gain scheduler: work from devices first, in turn (it is short and keeps
        them answered); then, among phases, the one Algorithm 4 picks."""
        with self._lock:
            sessions = {d: self.sessions.get(d) for d in queued}
        phases = {d: s.phase_gain() for d, s in sessions.items()
                  if s is not None and s.trains_next}  # fmt: skip
        others = [d for d in queued if d not in phases]
        return others[0] if others else self._gains.pick(phases)

    def _session(self, device_id: str) -> Session:
        with self._lock:
            session = self.sessions.get(device_id)
            if session is not None:
                return session
            # one Spool per inbox directory: segments that arrive while the session is being
            # made go to the same one (a second would clear its half-written entries)
            inbox = self._inbox(device_id)
        session = self.host.open(device_id, inbox)
        with self._lock:
            session.adopt_inbox()  # segments that arrived while it was being made
            for envelope in self._waiting.pop(device_id, []):
                session.deliver(envelope)
            self.sessions[device_id] = session
            del self._inboxes[device_id]  # the session's from now on
        return session

    def _resume_active(self) -> None:
        """Sessions checkpointed within session_idle_s resume at once (host.recently_active);
        the others when their device speaks."""
        for device_id in recently_active(self.config):
            with self._lock:
                self._waiting.setdefault(device_id, [])
                self._heard[device_id] = time.monotonic()
            self.scheduler.notify(device_id)

    def _checkpointed(self) -> list[str]:
        """The devices the trainer has a session checkpoint of."""
        return sorted(path.parent.name for path in checkpointed(self.config))

    def _unload_idle(self) -> None:
        """On the worker: checkpoint and unload every session idle for session_idle_s (an
        offer it still awaits an answer to is made again when its device next speaks)."""
        idle_since = time.monotonic() - self.config.session_idle_s
        with self._lock:
            idle = [
                self.sessions.pop(d)
                for d, s in list(self.sessions.items())
                if self._heard.get(d, 0.0) < idle_since and not s.has_queued_work
            ]
            for session in idle:
                self._heard.pop(session.device_id, None)
                self._gains.forget(session.device_id)
        for session in idle:
            self.host.save(session)
            self.endpoint.counters.inc("trainer.sessions_unloaded")
            log.info("%s: idle: session unloaded (its checkpoint stays)", session.device_id)

    def _save_all(self) -> None:
        for session in list(self.sessions.values()):
            self.host.save(session)

    # -- housekeeping --------------------------------------------------------------------------

    def _housekeep(self) -> None:
        """Every second: wake sessions whose deferred work is due and unload idle ones; every
        metrics interval: report; every checkpoint interval: checkpoint (on the worker: never
        mid-step)."""

        def every_second() -> None:
            self._wake_due()
            self.scheduler.call(self._unload_idle)

        save_all = functools.partial(self.scheduler.call, self._save_all)
        housekeep(self._stop, self.config, every_second=every_second, checkpoint=save_all,
                  report=self.report)  # fmt: skip

    def _wake_due(self) -> None:
        with self._lock:
            due = [d for d, s in self.sessions.items() if s.has_work]
        for device_id in due:
            self.scheduler.notify(device_id)

    def report(self) -> list[dict[str, object]]:
        """Every session's metrics: logged, published retained, and exported; the trainer's
        own (its zoo's, why Algorithm 4 picked whom) exported too."""
        trainer: dict[str, float] = {}
        if self.host.reuse is not None:
            zoo = self.host.reuse.metrics()
            log.info("metrics model zoo %s", zoo.model_dump())
            trainer.update(zoo.model_dump())
        if self.config.recl.scheduler == "marginal-gain":
            trainer.update({f"scheduler_picks_{why}": self._gains.picks[why] for why in REASONS})
        if trainer:
            self.metrics.trainer(trainer)
        reports = []
        for session in list(self.sessions.values()):
            figures = self.host.report(session)
            reports.append(figures)
            self.metrics.session(figures)
        return reports
