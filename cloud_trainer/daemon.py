"""``cloud-trainer serve``: Adaptive Model Streaming for every device on the broker.

The MQTT dispatcher hands each device's messages to its session (creating sessions on a
worker, never on the network side); one worker thread runs the round-robin scheduler, which
gives each session one step at a time, and is the only thread that touches session state
(checkpoints included). A housekeeping thread reports metrics: on the log, as retained MQTT
messages, and to Prometheus when a port is set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from pathlib import Path

from cloud_trainer.config import TrainerConfig
from cloud_trainer.outgoing import Outgoing
from cloud_trainer.scheduler import RoundRobin
from cloud_trainer.session import CHECKPOINT, Session
from cloud_trainer.teacher import load_teacher
from shared_schema.endpoint import TrainerEndpoint
from shared_schema.envelope import Envelope
from shared_schema.messages import MessageType, Metrics, Status
from shared_schema.signing import Signer, load_private_key
from shared_schema.topics import Topic, validate_device_id

log = logging.getLogger(__name__)


class TrainerDaemon:
    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.endpoint = TrainerEndpoint(config.mqtt, trainer_id=config.trainer_id)
        self.teacher = load_teacher(config.teacher)
        self._initial_model = config.student.model.read_bytes()
        key = config.updates.signing_key
        self._signer = Signer(load_private_key(key)) if key else None
        if self._signer is None:
            log.warning(
                "UNSIGNED: [updates] allow_unsigned is on: devices take any model, update or"
                " control from anyone who can publish on their topics (development only)"
            )
        self.sessions: dict[str, Session] = {}
        self._waiting: dict[str, list[Envelope]] = defaultdict(list)  # before its session
        self._lock = threading.Lock()
        self.online: dict[str, bool] = {}
        self.scheduler = RoundRobin(self._step)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._prometheus = _Prometheus(config.metrics.prometheus_port)

    @property
    def checkpoint_dir(self) -> Path:
        return self.config.checkpoint.directory

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._resume_sessions()
        for msg_type in (MessageType.HELLO, MessageType.SEGMENT, MessageType.ACK):
            self.endpoint.on(msg_type, self._deliver)
        self.endpoint.on(MessageType.STATUS, self._status)
        self.endpoint.start()
        for target, name in ((self.scheduler.run, "scheduler"), (self._housekeep, "housekeeping")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the step in progress, checkpoint every session, disconnect."""
        self._stop.set()
        self.scheduler.stop()
        for thread in self._threads:
            thread.join(timeout)
        self._save_all()
        self.endpoint.stop()

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
        with self._lock:
            session = self.sessions.get(topic.device_id)
            if session is None:
                if len(self.sessions) + len(self._waiting) >= self.config.max_sessions:
                    self.endpoint.counters.inc("trainer.sessions_refused")
                    return
                waiting = self._waiting[topic.device_id]
                waiting.append(envelope)
                # Bounded as the session's own queues will be; it takes them in order.
                if len(waiting) > self.config.max_pending_segments + self.config.max_pending_events:
                    del waiting[0]
                    self.endpoint.counters.inc("trainer.waiting_dropped")
            else:
                session.deliver(envelope)
        self.scheduler.notify(topic.device_id)

    def _status(self, envelope: Envelope, topic: Topic) -> None:
        assert isinstance(envelope.msg, Status)
        self.online[topic.device_id] = envelope.msg.state == "online"

    # -- the worker side -----------------------------------------------------------------------

    def _step(self, device_id: str) -> bool:
        session = self._session(device_id)
        for outgoing in session.step():
            self._send(device_id, outgoing)
        return session.has_work

    def _session(self, device_id: str) -> Session:
        with self._lock:
            session = self.sessions.get(device_id)
            if session is not None:
                return session
        session = self._new_session(device_id)
        with self._lock:
            for envelope in self._waiting.pop(device_id, []):
                session.deliver(envelope)
            self.sessions[device_id] = session
        return session

    def _new_session(self, device_id: str) -> Session:
        session = Session(
            device_id,
            self.config,
            self.teacher,
            self._initial_model,
            directory=self.checkpoint_dir / device_id,
            signer=self._signer,
        )
        resumed = session.restore()
        log.info(
            "%s: session %s (mirror at version %d)",
            device_id,
            "resumed" if resumed else "created",
            session.mirror.version,
        )
        return session

    def _resume_sessions(self) -> None:
        if not self.checkpoint_dir.is_dir():
            return
        for path in sorted(self.checkpoint_dir.glob(f"*/{CHECKPOINT}")):
            device_id = path.parent.name
            try:
                validate_device_id(device_id)
                self.sessions[device_id] = self._new_session(device_id)
            except Exception:
                log.exception("%s: cannot resume its session; it starts afresh", device_id)

    def _send(self, device_id: str, outgoing: Outgoing) -> None:
        self.endpoint.send(device_id, outgoing.msg, outgoing.body)

    def _save_all(self) -> None:
        for session in list(self.sessions.values()):
            try:
                session.save()
            except Exception:
                log.exception("%s: checkpoint failed", session.device_id)

    # -- housekeeping --------------------------------------------------------------------------

    def _housekeep(self) -> None:
        metrics_s = self.config.metrics.interval_s
        checkpoint_s = self.config.checkpoint.interval_s
        elapsed = 0.0
        while not self._stop.wait(metrics_s):
            elapsed += metrics_s
            if elapsed >= checkpoint_s:
                elapsed = 0.0
                self.scheduler.call(self._save_all)  # on the worker: never mid-step
            self.report()

    def report(self) -> list[dict[str, object]]:
        """Every session's metrics: logged, published retained, and exported."""
        reports = []
        for session in list(self.sessions.values()):
            figures = session.metrics()
            reports.append(figures)
            log.info("metrics %s", figures)
            fields = {k: v for k, v in figures.items() if k in Metrics.model_fields}
            self.endpoint.send(session.device_id, Metrics(**fields))
            self._prometheus.update(figures)
        return reports


class _Prometheus:
    """Session metrics as Prometheus gauges, labelled by device, when a port is set."""

    _NUMERIC = (
        "mirror_version",
        "sampling_rate_fps",
        "t_update_s",
        "training_seconds_last",
        "training_seconds_mean",
        "buffer_samples",
        "segments",
        "segments_rejected",
        "bytes_up",
        "bytes_down",
        "phases",
        "updates_sent",
        "updates_acked",
        "updates_rejected",
        "resyncs",
        "full_models",
    )

    def __init__(self, port: int | None) -> None:
        self._gauges: dict[str, object] = {}
        if port is None:
            return
        import prometheus_client

        registry = prometheus_client.CollectorRegistry()
        for name in self._NUMERIC:
            self._gauges[name] = prometheus_client.Gauge(
                f"amstream_{name}", f"trainer session {name}", ["device"], registry=registry
            )
        prometheus_client.start_http_server(port, registry=registry)

    def update(self, figures: dict[str, object]) -> None:
        for name, gauge in self._gauges.items():
            value = figures.get(name)
            if value is not None:
                gauge.labels(device=figures["device_id"]).set(value)  # type: ignore[attr-defined]
