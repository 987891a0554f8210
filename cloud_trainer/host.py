"""What a process that runs sessions holds, for the single daemon and Ray's session actors alike:
the teacher, the initial student file, the signer, and the parts some sections add (RECL's
zoo, OneAdapt's DNNGrad); how a session is opened (from its checkpoint where there is one),
how what it makes is sent, reported and saved; and the housekeeping clock both run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cloud_trainer.config import TrainerConfig
from cloud_trainer.oneadapt.dnngrad import DnnGrad
from cloud_trainer.outgoing import Outgoing
from cloud_trainer.recl.reuse import ModelReuse
from cloud_trainer.session import CHECKPOINT, Session
from cloud_trainer.student import import_tflite
from cloud_trainer.teacher import load_teacher
from edge_runtime.spool import Spool
from shared_schema.endpoint import TrainerEndpoint
from shared_schema.errors import ProtocolError
from shared_schema.messages import Metrics
from shared_schema.signing import Signer, load_private_key
from shared_schema.topics import Plain, plain_json, validate_device_id

log = logging.getLogger(__name__)


class SessionHost:
    """The parts every session of one process shares, and one way to use them."""

    def __init__(self, config: TrainerConfig, endpoint: TrainerEndpoint) -> None:
        self.config = config
        self.endpoint = endpoint
        self.teacher = load_teacher(config.teacher)
        self.initial_model = config.student.model.read_bytes()
        key = config.updates.signing_key
        lifetime = config.updates.signature_lifetime_s
        self.signer = Signer(load_private_key(key), lifetime) if key else None
        if self.signer is None:
            log.warning(
                "UNSIGNED: [updates] allow_unsigned is on: devices take any model, update or"
                " control from anyone who can publish on their topics (development only)"
            )
        self.reuse = None  # RECL's one zoo for every device, where [recl] is on
        if config.recl.enabled:
            threads = config.teacher.threads
            self.reuse = ModelReuse(config.recl, self.initial_model, config.zoo_directory, threads)
        self.dnngrad = None  # OneAdapt's, one for every session, where [oneadapt] is on
        if config.oneadapt.enabled:
            teacher = import_tflite(config.teacher.model)
            self.dnngrad = DnnGrad(teacher.to(config.teacher.device), config.oneadapt.threshold)

    def directory(self, device_id: str) -> Path:
        return self.config.checkpoint.directory / device_id

    def open(self, device_id: str, inbox: Spool | None = None) -> Session:
        """The device's session, resumed from its checkpoint where it has one."""
        session = Session(
            device_id,
            self.config,
            self.teacher,
            self.initial_model,
            directory=self.directory(device_id),
            signer=self.signer,
            inbox=inbox,
            reuse=self.reuse,
            dnngrad=self.dnngrad,
        )
        resumed = session.restore()
        log.info(
            "%s: session %s (mirror at version %d)",
            device_id,
            "resumed" if resumed else "created",
            session.mirror.version,
        )
        return session

    def step(self, session: Session) -> None:
        """One step of the session's work, and what it made sent to its device."""
        for outgoing in session.step():
            self.send(session, outgoing)

    def send(self, session: Session, outgoing: Outgoing) -> None:
        handle = self.endpoint.send(session.device_id, outgoing.msg, outgoing.body)
        session.sent(handle.seq, outgoing)

    def report(self, session: Session) -> dict[str, object]:
        """A session's figures: logged, and published retained (metrics and session topics)."""
        zoo = self.reuse.metrics() if self.reuse is not None else None
        figures = session.metrics()
        log.info("metrics %s", figures)
        fields = {k: v for k, v in figures.items() if k in Metrics.model_fields}
        self.endpoint.send(session.device_id, Metrics(**fields, zoo=zoo))
        self.endpoint.publish_plain(session.device_id, Plain.SESSION, plain_json(figures))
        return figures

    @staticmethod
    def save(session: Session) -> None:
        try:
            session.save()
        except Exception:
            log.exception("%s: checkpoint failed", session.device_id)

    def close(self) -> None:
        if self.reuse is not None:
            self.reuse.close()


def checkpointed(config: TrainerConfig) -> list[Path]:
    """Every device's session checkpoint under the checkpoint directory."""
    directory = config.checkpoint.directory
    if not directory.is_dir():
        return []
    paths = directory.glob(f"*/{CHECKPOINT}")
    return [path for path in paths if _is_device_id(path.parent.name)]


def recently_active(config: TrainerConfig) -> list[str]:
    """The devices whose sessions were checkpointed within session_idle_s, newest first (up to
    max_sessions): they resume at once when the trainer starts, so that a version made just
    before a crash reaches its device even if the device says nothing."""
    recent = time.time() - config.session_idle_s
    found = [(path.stat().st_mtime, path.parent.name) for path in checkpointed(config)]
    active = sorted((f for f in found if f[0] >= recent), reverse=True)
    return [device_id for _, device_id in active[: config.max_sessions]]


def housekeep(
    stop: threading.Event,
    config: TrainerConfig,
    *,
    every_second: Callable[[], None],
    checkpoint: Callable[[], None],
    report: Callable[[], object],
) -> None:
    """Until ``stop``: every second (or metrics interval, if shorter), ``every_second``; every
    checkpoint interval, ``checkpoint``; every metrics interval, ``report``."""
    metrics_s, checkpoint_s = config.metrics.interval_s, config.checkpoint.interval_s
    tick = min(1.0, metrics_s)
    since_metrics = since_checkpoint = 0.0
    while not stop.wait(tick):
        since_metrics += tick
        since_checkpoint += tick
        every_second()
        if since_checkpoint >= checkpoint_s:
            since_checkpoint = 0.0
            checkpoint()
        if since_metrics >= metrics_s:
            since_metrics = 0.0
            report()


def _is_device_id(name: str) -> bool:
    try:
        validate_device_id(name)
    except ProtocolError:
        return False
    return True
