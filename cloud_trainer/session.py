"""One device's session (SPEC §6, seed 002 Algorithm 1): its student, optimizer state, sample
buffer, class subset, sampling and training rates, and the mirror of its model.

The MQTT side only hands messages in (``deliver``, cheap and thread-safe); everything else
happens in ``step``, which the scheduler calls on its worker thread, one bounded piece of work
at a time: first the device's hellos and acks, then either labelling one uploaded segment
(teacher inference, ASR/ATR on the way) or one training phase followed by an update.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import zstandard

from cloud_trainer.ams.asr import AdaptiveSamplingRate, phi_score
from cloud_trainer.ams.atr import AdaptiveTrainingRate
from cloud_trainer.ams.gate import judge
from cloud_trainer.ams.judging import FileJudge
from cloud_trainer.ams.rebase import should_rebase
from cloud_trainer.ams.training import PhaseResult, new_optimizer, train_phase
from cloud_trainer.config import TrainerConfig
from cloud_trainer.dashboard.actions import (
    Action,
    ActionRefused,
    Pause,
    Resume,
    Rollback,
    SamplingBounds,
)
from cloud_trainer.dashboard.probe import AccuracyProbe
from cloud_trainer.dashboard.records import AckRecord, Record, UpdateRecord, UplinkRecord
from cloud_trainer.device_clock import DeviceClock
from cloud_trainer.mirror import ModelMirror
from cloud_trainer.oneadapt.dnngrad import DnnGrad
from cloud_trainer.opa.elastic_student import ElasticStudent, is_elastic
from cloud_trainer.opa.refit import SelectorRefit
from cloud_trainer.outgoing import Outgoing
from cloud_trainer.profiling import StageClock
from cloud_trainer.recl.reuse import BASE, RETRAINED, ModelReuse
from cloud_trainer.recl.selection import CURRENT
from cloud_trainer.sample_buffer import Sample, SampleBuffer, labelled_samples
from cloud_trainer.student import TFLiteStudent, student_from
from cloud_trainer.student.float16 import for_precision
from cloud_trainer.teacher import Teacher
from edge_runtime.durable import atomic_write
from edge_runtime.h264 import SegmentDecodeError, decode_frames
from edge_runtime.spool import Spool, SpoolEntry
from shared_schema.envelope import Envelope, decode, encode, sha256_hex
from shared_schema.errors import ProtocolError
from shared_schema.messages import (
    Ack,
    AckReason,
    Control,
    Gradient,
    Hello,
    MessageType,
    Model,
    Segment,
    Update,
    UpdateFormat,
)
from shared_schema.metrics import ClassSubset
from shared_schema.signing import Signer

log = logging.getLogger(__name__)

CHECKPOINT = "session.pt"
# The model and update messages an ack may still answer, newest last. An ack answers one of
# them or is ignored: a device cannot make the trainer act on what it never sent.
SENT_WINDOW = 32
# Rejections a fresh delta or the full model can cure; the others (a bad signature, a model
# that does not run) would fail again.
_RESYNCABLE = {
    AckReason.BASE_MISMATCH,
    AckReason.STALE_VERSION,
    AckReason.EXPIRED,
    AckReason.MISSING_UPDATE,
    AckReason.BAD_HASH,
    AckReason.BAD_PAYLOAD,
    AckReason.UNSUPPORTED_FORMAT,
    AckReason.INTERNAL_ERROR,
    AckReason.UNKNOWN_VERSION,  # a rollback its standby slot could not do: the file comes
}
# What the session has done since the daemon last asked (``drain``), for the dashboard.
MAX_RECORDS = 256


@dataclass
class DeviceView:
    """What the trainer knows of the device: from its hello and its acks."""

    version: int | None = None
    sha256: str | None = None
    update_formats: tuple[str, ...] = (UpdateFormat.QDELTA.value,)
    profile: str = ""
    known: bool = False  # a hello (or a checkpoint) told us what it runs
    reported: int | None = None  # the number the device itself gives the file it runs
    # what its standby slot holds, (version, sha256), where it numbered that file: what a
    # rollback control can return it to
    previous: tuple[int, str] | None = None


@dataclass(frozen=True)
class _Sent:
    """A model or update message sent, as an ack that accepts it must describe the device."""

    ref_type: str
    version: int
    sha256: str
    at: float  # time.monotonic() when it was sent

    @classmethod
    def of(cls, outgoing: Outgoing, mirror_sha256: str) -> _Sent | None:
        """``mirror_sha256``: the mirror's file when it was sent (what a rollback returns to)."""
        msg, now = outgoing.msg, time.monotonic()
        if isinstance(msg, Update):
            return cls("update", msg.new_version, msg.result_sha256, now)
        if isinstance(msg, Model):
            return cls("model", msg.version, sha256_hex(outgoing.body), now)
        if isinstance(msg, Control) and msg.rollback_to is not None:
            return cls("control", msg.rollback_to, mirror_sha256, now)
        return None


MAX_ACK_TIMEOUT_S = 3600.0


@dataclass
class SessionStats:
    segments: int = 0
    segments_rejected: int = 0
    segments_dropped: int = 0  # waited too long behind others
    events_dropped: int = 0  # hellos and acks past max_pending_events (a flood): the oldest
    checkpoints_refused: int = 0  # damaged or foreign: set aside, training from the mirror
    stale_checkpoints: int = 0  # older than the mirror's last version: trained from the mirror
    mirror_files_damaged: int = 0  # set aside on resuming: their devices get the full model
    frames: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    phases: int = 0
    phases_gated: int = 0  # their model scored worse than the device's: not sent
    selector_refits: int = 0  # an elastic student's OPA selection refitted and sent
    rebases: int = 0  # the base model did better on new samples: training restarted from it
    reuses: int = 0  # an expert of the zoo did: training went on from it (RECL)
    scene_cuts: int = 0  # segments the device sent at once on a cut (edge_runtime.scene_cut)
    gradient_bytes: int = 0  # OneAdapt's DNNGrad bodies sent
    switch_bytes: int = 0  # what the updates that took the device to a chosen model cost
    updates_sent: int = 0
    updates_acked: int = 0
    updates_rejected: int = 0
    resyncs: int = 0
    full_models: int = 0
    full_models_deferred: int = 0  # asked for within full_model_interval_s of the last one
    acks_unmatched: int = 0  # answered nothing sent (or answered twice): ignored
    offered_again: int = 0  # the latest model or update, sent again after the ack timeout
    rollbacks: int = 0  # training went back to the device's file after it refused a model
    rollbacks_ordered: int = 0  # by an operator (the dashboard)
    training_seconds: list[float] = field(default_factory=list)  # per phase, the last 100
    training_seconds_total: float = 0.0
    # where the time went, summed per stage: decode, teacher, samples, probe, gradient; a
    # phase's phase.select, then its steps' phase.batch, phase.forward, phase.backward and
    # phase.optimizer; gate, checkpoint, write_back (bench-serve divides them by the phases)
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Archived:
    """What the checkpoint keeps of a labelled segment: its bytes and the teacher's labels."""

    segment: Segment
    h264: bytes
    labels: bytes  # zstd of the (N, H, W) uint8 labels at the training frame size
    # the teacher's scores (``_pack_scores``), where training uses them; None, not b"": an
    # empty bytes pickles as a call, which the checkpoint's weights-only loader refuses
    soft: bytes | None = None


class Session:
    def __init__(
        self,
        device_id: str,
        config: TrainerConfig,
        teacher: Teacher,
        initial_model: bytes,
        *,
        directory: Path,
        signer: Signer | None = None,
        inbox: Spool | None = None,
        reuse: ModelReuse | None = None,
        dnngrad: DnnGrad | None = None,
    ) -> None:
        """``reuse``: the trainer's expert zoo (RECL), where ``[recl]`` is on; ``dnngrad``:
        the teacher's DNNGrad (OneAdapt), where ``[oneadapt]`` is on."""
        self.device_id = device_id
        self._reuse = reuse
        self._dnngrad = dnngrad
        # for the marginal-gain scheduler: the last phase, until the next samples judge it
        # (request, the file it trained from and the one it made, training seconds), then its
        # measured (request, mIoU gain, seconds)
        self._phase_to_judge: tuple[int, bytes, bytes, float] | None = None
        self._phase_gain: tuple[int, float, float] | None = None
        self.config = config
        self._signer = signer
        self.directory = directory
        self._teacher = teacher
        self._graph = initial_model  # the quantized student file: the truth of its graph
        self._elastic = is_elastic(initial_model)  # OPA's sub-networks train with the student
        if self._elastic and config.student.precision != "int8":
            raise ValueError("an elastic student (OPA) trains at int8: set [student] precision")
        refits = self._elastic and config.opa.refit_phases > 0
        self._refit = SelectorRefit(config.opa) if refits else None
        # the pretrained student as devices run it: what a rebase returns to
        self._base = for_precision(initial_model, config.student.precision)
        training = config.training
        self.buffer = SampleBuffer(training.horizon_s)
        self.asr = AdaptiveSamplingRate(config.asr)
        self.atr = AdaptiveTrainingRate(config.atr)
        self.mirror = ModelMirror(
            self._base,
            device_id=device_id,
            history=config.updates.history,
            signer=signer,
            directory=directory / "mirror",
        )
        # The last file sent is the truth (the initial model, for a new device); a checkpoint
        # of the very weights that made it replaces these in restore().
        self.student = self._student_of(self.mirror.data)
        self.optimizer = new_optimizer(self.student, training)
        self._judge = FileJudge(config.teacher.threads)  # for the gate and the rebase rule
        # the weights of the last model sent, kept only where a gated phase returns to them
        self._sent_weights: dict[str, torch.Tensor] = {}
        self._remember_sent()
        self.subset = ClassSubset(self.student.num_classes)
        self.device = DeviceView()
        # when its last phases ended (time.monotonic(): this process's, never checkpointed)
        self.phase_ends: deque[float] = deque(maxlen=100)
        self.stats = SessionStats(mirror_files_damaged=len(self.mirror.damaged))
        self._rng = np.random.default_rng(training.seed)
        self._lock = threading.Lock()  # guards the two queues, filled by the MQTT thread
        self._events: deque[Envelope] = deque()
        # Segments wait on disk (acknowledged to the broker only once there) until labelled.
        # the daemon's own inbox where it has one, empty or not: a second Spool on the same
        # directory would clear the first one's half-written entries as it opens
        self._inbox = inbox if inbox is not None else open_inbox(directory, config)
        self._segments: deque[SpoolEntry] = deque()
        self._archive: deque[_Archived] = deque()
        self._previous_labels: np.ndarray | None = None
        self._fresh = 0  # samples labelled since the last phase: the next one's held-out
        self._unjudged = 0  # samples labelled since RECL's last selection: the next one's
        self._scene_start = -float("inf")  # the device's last scene cut (device time)
        # RECL's look: after a cut the device is told to send its next segment within
        # recl.look_s, for the safety check to judge the new scene on a few frames at once
        self._looking = False
        # the next segment's answer carries a control, unless one goes before it (restore)
        self._retell = False
        self._next_rate_update: float | None = None
        self._clock = DeviceClock()  # the device's time, across its restarts
        self._phase_due = False
        self._last_resync: tuple[str | None, int] | None = None
        self._sent: OrderedDict[int, _Sent] = OrderedDict()  # by envelope seq
        self._last_full_model = -float("inf")  # time.monotonic() of the last one sent
        self._full_model_wanted = False  # one was deferred (full_model_interval_s)
        self._resumed = False  # restored: offer the device the mirror's latest on the next step
        self._ack_timeout = config.updates.ack_timeout_s  # doubles with each unanswered offer
        self.paused = False  # by an operator: no phases, no updates (labelling goes on)
        self._records: deque[Record] = deque(maxlen=MAX_RECORDS)
        dashboard = config.dashboard
        self._probe = (
            AccuracyProbe(self._judge, self._base, dashboard.probe_frames)
            if dashboard.enabled
            else None
        )
        self.adopt_inbox()

    # -- the MQTT side -------------------------------------------------------------------------

    def deliver(self, envelope: Envelope) -> None:
        """Take a message from the device; never blocks on training. A segment is on disk
        when this returns."""
        if envelope.type == MessageType.SEGMENT:
            self._queue_segment(store_segment(self._inbox, envelope))
            return
        with self._lock:  # the newest say where the device is: a flood costs only its oldest
            self._events.append(envelope)
            if len(self._events) > self.config.max_pending_events:
                self._events.popleft()
                self.stats.events_dropped += 1

    def adopt_inbox(self) -> None:
        """Queue the segments in the inbox not queued yet: those received before a restart,
        or before this session existed."""
        with self._lock:
            queued = set(self._segments)
        for entry in self._inbox.entries():
            if entry not in queued:
                self._queue_segment(entry)

    def _queue_segment(self, entry: SpoolEntry) -> None:
        with self._lock:
            self._segments.append(entry)
            dropped = (
                self._segments.popleft()
                if len(self._segments) > self.config.max_pending_segments
                else None
            )
        if dropped is not None:  # waited too long behind newer ones
            self.stats.segments_dropped += 1
            self._inbox.remove(dropped)

    @property
    def has_work(self) -> bool:
        """Something to do now: queued messages, a phase, or an offer that is due."""
        due = self._full_model_due or self._unanswered or self._resumed
        return self.has_queued_work or due

    @property
    def requests(self) -> int:
        """Training requests begun so far (Algorithm 4): a scene cut or a move to another
        model makes the next phase train for another scene or from another model, whose gain
        the last phase's says nothing of."""
        stats = self.stats
        return stats.scene_cuts + stats.rebases + stats.reuses

    @property
    def trains_next(self) -> bool:
        """Its next step is a training phase (nothing from the device waits before it)."""
        with self._lock:
            return self._phase_due and not (self._events or self._segments)

    @property
    def has_queued_work(self) -> bool:
        """Messages from the device not handled yet, or a phase they made due."""
        with self._lock:
            return bool(self._events or self._segments) or self._phase_due

    @property
    def _unanswered(self) -> bool:
        """The newest model or update sent has waited longer than the ack timeout."""
        newest = next(reversed(self._sent.values()), None)
        return newest is not None and time.monotonic() - newest.at > self._ack_timeout

    @property
    def _full_model_due(self) -> bool:
        return self._full_model_wanted and self._full_model_allowed()

    def _full_model_allowed(self) -> bool:
        interval = self.config.updates.full_model_interval_s
        return time.monotonic() - self._last_full_model >= interval

    def sent(self, seq: int, outgoing: Outgoing) -> None:
        """``outgoing`` went to the device as envelope ``seq``: an ack may answer it, once."""
        entry = _Sent.of(outgoing, self.mirror.sha256)
        if entry is None:
            return
        self._sent[seq] = entry
        while len(self._sent) > SENT_WINDOW:
            self._sent.popitem(last=False)

    # -- the worker side -----------------------------------------------------------------------

    def step(self) -> list[Outgoing]:
        """One bounded piece of work; returns the messages to send to the device."""
        out: list[Outgoing] = []
        with self._lock:
            events, self._events = list(self._events), deque()
            segment = self._segments.popleft() if self._segments else None
        if self._resumed:  # a version may have been made, and the process killed, unsent
            self._resumed = False
            out += self._catch_up(self.device.sha256)
        if self._unanswered:  # lost on the way (or the device is away): offer it again
            out += self._offer_again()
        for envelope in events:
            out += self._handle_event(envelope)
        if self._full_model_due:
            out += self._catch_up(self.device.sha256)  # what the device runs by now
        if segment is not None:
            out += self._label_stored(segment)
        elif self._phase_due:
            out += self._train()
        return out

    def _signed_control(self, control: Control) -> Outgoing:
        self._retell = False
        if self._signer is not None:
            control = self._signer.sign(self.device_id, control)
        return Outgoing(control)

    def control(self) -> Control:
        t_update_s = self.atr.t_update_s
        if self._looking:
            t_update_s = min(t_update_s, self.config.recl.look_s)
        return Control(sampling_rate_fps=self.asr.rate_fps, t_update_s=t_update_s)

    # -- an operator's actions (the dashboard) -----------------------------------------------------

    def act(self, action: Action) -> tuple[str, list[Outgoing]]:
        """Do an operator's ``action``: what was done, in words, and the messages it sends;
        ActionRefused, saying why, where it cannot be done."""
        if isinstance(action, Pause | Resume):
            self.paused = isinstance(action, Pause)
            self._phase_due = not self.paused and self._fresh > 0
            return f"learning {'paused' if self.paused else 'resumed'}", []
        if isinstance(action, SamplingBounds):
            self.asr.bound(action.min_fps, action.max_fps)
            # (the device also keeps within its profile's [sampler] bounds)
            done = f"sampling bounded to {action.min_fps:g}-{action.max_fps:g} fps"
            return f"{done}, rate {self.asr.rate_fps:g} fps", [self._signed_control(self.control())]
        assert isinstance(action, Rollback)
        return self._order_rollback(action.version)

    def _order_rollback(self, version: int) -> tuple[str, list[Outgoing]]:
        """Back to the mirror's ``version``: a signed rollback control where the device's
        standby slot holds that file, or else the file made the next version (a device takes
        no version at or below the one it runs); training goes on from it either way, and
        nothing sent before it is offered again (a device that applied such an update
        meanwhile is brought back: see _ack)."""
        data = self.mirror.versions().get(version)
        if data is None:
            held = ", ".join(f"v{v}" for v in self.mirror.versions())
            raise ActionRefused(f"version {version} is no longer held (the trainer holds {held})")
        if version == self.mirror.version and self.mirror.sha256 == self.device.sha256:
            raise ActionRefused(f"the device runs version {version} already")
        self.stats.rollbacks_ordered += 1
        self._last_resync = None  # whatever the device says next is answered afresh
        sha = sha256_hex(data)
        if sha == self.device.sha256:  # the device runs it; newer ones were on their way
            self._return_to(version)
            return f"training back on v{version}, which the device runs", []
        if self.device.previous == (version, sha):
            self._return_to(version)
            control = self.control().model_copy(update={"rollback_to": version})
            signed = self._signed_control(control)
            self._record_update(signed, f"rollback to v{version}")
            return f"rollback to v{version}: a signed control (its standby slot holds it)", [signed]
        return self._reissue(version)

    def _reissue(self, version: int) -> tuple[str, list[Outgoing]]:
        """The file of ``version`` as the next version: a delta, or (a device that takes none)
        the full model, when full_model_interval_s allows."""
        update = self.mirror.reissue(version, self._delta_format())
        self._went_back()
        # No checkpoint needed before this is sent: an older one reads as stale against the
        # new version, and training resumes from its file (the daemon saves after the action).
        self._train_from_mirror()
        done = f"rollback to v{version}: its file made v{self.mirror.version}"
        if update is None:
            return done + ", sent whole", self._full_model()
        self.stats.updates_sent += 1
        self._record_update(update, f"rollback to v{version}")
        return done, self._counted_downlink([update])

    def _went_back(self) -> None:
        """A rollback: the device's model no longer descends from the expert it moved to."""
        if self._reuse is not None:
            self._reuse.forget(self.device_id)

    def _return_to(self, version: int) -> None:
        """Training and the mirror back on the mirror's ``version``, crash-consistently: the
        checkpoint holds that version's weights before the later versions leave the disk (a
        checkpoint of a later version, with the mirror back on this one, would read as the
        weights of the next version: see _restore)."""
        self._went_back()
        self._train_from(self.mirror.versions()[version])
        self._remember_sent()
        self.save(making=version)
        self.mirror.roll_back(version)

    def _record_update(
        self, update: Outgoing, cause: str, loss: tuple[float, float] | None = None
    ) -> None:
        msg = update.msg
        fmt = msg.format.value if isinstance(msg, Update) else msg.type  # model, control
        record = UpdateRecord(time.time(), self.mirror.version, fmt, len(update.body), cause, loss)
        self._records.append(record)

    @property
    def _stages(self) -> StageClock:
        """Adds to the stats' sums (which a restore replaces)."""
        return StageClock(self.config.training.device, self.stats.stage_seconds)

    def drain(self) -> list[Record]:
        """What the session did since the last call (for the dashboard); worker thread only."""
        records = list(self._records)
        self._records.clear()
        return records

    def _handle_event(self, envelope: Envelope) -> list[Outgoing]:
        msg = envelope.msg
        if isinstance(msg, Hello):
            return self._hello(msg)
        if isinstance(msg, Ack) and msg.ref_type in ("update", "model"):
            return self._ack(msg)
        if isinstance(msg, Ack) and msg.ref_seq in self._sent:  # a rollback's (others: no)
            return self._ack(msg)
        return []

    def _hello(self, hello: Hello) -> list[Outgoing]:
        self.device = DeviceView(
            version=hello.model_version,
            sha256=hello.model_sha256,
            update_formats=tuple(f.value for f in hello.update_formats),
            profile=hello.profile,
            known=True,
            reported=hello.model_version,
        )
        log.info("%s: hello (%s, model %s)", self.device_id, hello.profile, hello.model_version)
        return [*self._catch_up(hello.model_sha256), self._signed_control(self.control())]

    def _offer_again(self) -> list[Outgoing]:
        log.warning("%s: no ack for %.0f s: offering the latest again", self.device_id,
                    self._ack_timeout)  # fmt: skip
        self._sent.clear()  # an ack of an earlier offer is no longer awaited
        self._ack_timeout = min(2 * self._ack_timeout, MAX_ACK_TIMEOUT_S)
        self._last_resync = None  # the same answer as before, if it still fits
        self.stats.offered_again += 1
        return self._catch_up(self.device.sha256)

    def _answers(self, ack: Ack) -> bool:
        """Whether ``ack`` answers a message sent and not yet answered, and, accepting it,
        reports the very file that message made."""
        sent = self._sent.get(ack.ref_seq)
        if sent is None or sent.ref_type != ack.ref_type:
            return False
        if ack.ok and (ack.model_version, ack.model_sha256) != (sent.version, sent.sha256):
            return False
        del self._sent[ack.ref_seq]
        self._ack_timeout = self.config.updates.ack_timeout_s  # the device is listening
        return True

    def _ack(self, ack: Ack) -> list[Outgoing]:
        answered = self._sent.get(ack.ref_seq)
        if not self._answers(ack):
            self.stats.acks_unmatched += 1
            log.warning("%s: ignored an ack of %s %d: nothing sent it answers",
                        self.device_id, ack.ref_type, ack.ref_seq)  # fmt: skip
            return []
        assert answered is not None  # _answers found it
        self._records.append(AckRecord(time.time(), answered.version, ack.ok, ack.reason or ""))
        if ack.ok and ack.model_sha256 != self.device.sha256 and self.device.reported is not None:
            self.device.previous = (self.device.reported, self.device.sha256 or "")
        self.device.version, self.device.sha256 = ack.model_version, ack.model_sha256
        self.device.reported = ack.model_version
        if ack.ok:
            self.stats.updates_acked += 1
            if self.mirror.find(ack.model_sha256) is None:  # a version a rollback dropped
                return self._catch_up(ack.model_sha256)
            return []
        self.stats.updates_rejected += 1
        log.warning("%s: device refused an update: %s %s", self.device_id, ack.reason, ack.detail)
        if ack.reason == AckReason.INVALID_MODEL:
            self._roll_back(ack.model_sha256)
        if ack.reason not in _RESYNCABLE:
            return []
        return self._catch_up(ack.model_sha256)

    def _roll_back(self, device_sha: str | None) -> None:
        """The device judged the trained model broken: training goes back to the file it
        runs, with fresh optimizer state, so later updates build on a model it accepted."""
        held = self.mirror.find(device_sha) if device_sha else None
        if held is None:
            return  # the device runs a file the mirror no longer holds: keep training on
        self._return_to(held)
        self.stats.rollbacks += 1
        log.warning("%s: training rolled back to version %d", self.device_id, held)

    def _train_from_mirror(self) -> None:
        """The student becomes the mirror's latest file again, with fresh optimizer state."""
        self._train_from(self.mirror.data)
        self._remember_sent()

    def _train_from(self, data: bytes, state: dict | None = None) -> None:
        """The student takes the weights of the model file ``data``, with fresh optimizer
        state, or the training ``state`` under that file (master weights and moments, see
        ``_training_state``)."""
        self.student.load_state_dict(self._student_of(data).state_dict())
        self.optimizer = new_optimizer(self.student, self.config.training)
        if state is None:
            return
        try:
            self.student.load_state_dict(state["student"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:  # a state of another graph
            log.warning("%s: a training state that does not fit the student (%s): training"
                        " from the file's weights", self.device_id, exc)  # fmt: skip
            self.student.load_state_dict(self._student_of(data).state_dict())
            self.optimizer = new_optimizer(self.student, self.config.training)

    def _training_state(self) -> bytes:
        """The student's master weights and optimizer state as a torch file: what an expert
        keeps."""
        buffer = io.BytesIO()
        torch.save({"student": {k: v.detach().cpu() for k, v in self.student.state_dict().items()},
                    "optimizer": _to_cpu(self.optimizer.state_dict())}, buffer)  # fmt: skip
        return buffer.getvalue()

    def _running_state(self) -> bytes | None:
        """The training state, where the student is the model the device runs (None after a
        gated phase: the state is of another model)."""
        running = self.mirror.candidate(self.student) == self.mirror.data
        return self._training_state() if running else None

    def _student_of(self, data: bytes) -> TFLiteStudent | ElasticStudent:
        """The student holding the weights of the model file ``data``; a float16 device's is
        trained in float, an int8 one's on the file's frozen grids; an elastic student (OPA)
        with its sub-networks and head."""
        if self._elastic:
            student = ElasticStudent(data).to(self.config.training.device)
        else:
            student = student_from(self._graph, data).to(self.config.training.device)
        student.fake_quant = self.config.student.precision == "int8"
        return student

    def _remember_sent(self) -> None:
        """Copy the weights of the model just sent, if a gated phase is to return to them
        ([gate] revert); otherwise no copy per update."""
        if self.config.gate.revert:
            state = self.student.state_dict()
            self._sent_weights = {k: v.detach().clone() for k, v in state.items()}

    def _catch_up(self, device_sha: str | None) -> list[Outgoing]:
        """Whatever brings the device from the file it runs to the mirror's latest: nothing,
        a delta from a version the mirror still holds, or the full model."""
        self._full_model_wanted = False  # this answer supersedes a deferred one
        if device_sha == self.mirror.sha256:
            if self.device.version is not None:  # the device's number for this very file
                self.mirror.renumber_after(self.device.version - 1)
            self.device.version = self.mirror.version
            return []
        target = (device_sha, self.mirror.version)
        if target == self._last_resync:
            return []  # already answered; the device will report back after applying it
        self._last_resync = target
        held = self.mirror.find(device_sha) if device_sha else None
        if held is not None and self.device.version not in (None, held):
            held = None  # the device numbers that file otherwise: only a full model will do
        if self.device.version is not None:
            # A device ahead of the mirror (a trainer that lost its state) takes nothing older.
            self.mirror.renumber_after(self.device.version)
        fmt = self._delta_format()
        delta = self.mirror.update_since(held, fmt) if held is not None and fmt else None
        if delta is None:
            return self._full_model()
        self.stats.resyncs += 1
        return self._counted_downlink([delta])

    def _full_model(self) -> list[Outgoing]:
        """The whole model, at most once per full_model_interval_s; asked again sooner, the
        device gets it when the interval is over, if the file it runs by then still needs it."""
        if not self._full_model_allowed():
            self._full_model_wanted = True
            self._last_resync = None  # not answered yet
            self.stats.full_models_deferred += 1
            return []
        self._last_full_model = time.monotonic()
        self.stats.resyncs += 1
        self.stats.full_models += 1
        return self._counted_downlink([self.mirror.full_model(self.config.student.model.stem)])

    def _delta_format(self) -> UpdateFormat | None:
        """A format that can carry several versions' changes and that the device applies."""
        for fmt in (UpdateFormat.QDELTA, UpdateFormat.ZPATCH):
            if fmt.value in self.device.update_formats:
                return fmt
        return None

    def _label_stored(self, entry: SpoolEntry) -> list[Outgoing]:
        """Label a segment from the inbox; it leaves the inbox once labelled (or refused)."""
        try:
            envelope = decode(entry.read())
        except (OSError, ProtocolError) as exc:  # written whole by us: only a damaged disk
            self.stats.segments_rejected += 1
            log.error("%s: inbox entry %s unreadable: %s", self.device_id, entry.path, exc)
            self._inbox.remove(entry)
            return []
        out = self._label(envelope)
        self._inbox.remove(entry)
        return out

    def _label(self, envelope: Envelope) -> list[Outgoing]:
        assert isinstance(envelope.msg, Segment)
        placed = self._clock.place(envelope.header.boot, envelope.msg.timestamps)
        segment = envelope.msg.model_copy(update={"timestamps": placed})
        try:
            with self._stages.stage("decode"):
                frames = decode_frames(
                    envelope.body, segment.timestamps, size=(segment.width, segment.height)
                )
        except SegmentDecodeError as exc:
            self.stats.segments_rejected += 1
            log.warning("%s: undecodable segment %d: %s", self.device_id, envelope.header.seq, exc)
            reject = Ack(
                ref_type="segment",
                ref_seq=envelope.header.seq,
                ok=False,
                reason=AckReason.DECODE_ERROR,
                detail=str(exc)[:1024],
            )
            return [Outgoing(reject)]
        height, width = self._teacher.input_size
        with self._stages.stage("teacher"):
            rgb = np.stack([f.rgb(width, height) for f in frames])
            teacher_labels = self._teacher.label(rgb)
            distilled = self.config.training.distillation == "kl"
            soft = self._teacher.scores(rgb) if distilled else None
        if segment.scene_cut:
            self._cut(segment.timestamps[0])
        with self._stages.stage("samples"):
            size = self.config.training.frame_size
            samples = labelled_samples(frames, teacher_labels, size, soft)
            self._add_samples(samples)
            labels = np.stack([s.labels for s in samples])
            self._archive_segment(segment, envelope.body, labels, soft)
        self.stats.segments += 1
        self.stats.frames += len(frames)
        self.stats.bytes_up += len(envelope.body)
        # a cut's frame is judged (below), not trained on alone: one frame of a new scene,
        # trained on at once, taught the model that scene's first look (README, scene cuts);
        # a phase the segment before it made due still trains, unless the cut rebases
        self._phase_due = not self.paused and (self._phase_due or not segment.scene_cut)
        self._records.append(UplinkRecord(time.time(), segment.width, segment.height,
                                          segment.bitrate_kbps, len(frames)))  # fmt: skip
        with self._stages.stage("probe"):
            self._probe_accuracy(samples)
        with self._stages.stage("gradient"):
            gradient = self._gradient(rgb[-1], segment.timestamps[-1])
        # the segment after a cut's ends RECL's look: T_update goes back to ATR's
        looked = self._looking and not segment.scene_cut
        self._looking = self._looking and segment.scene_cut
        # a device sampling faster than it was told missed a control or cut on its own (or began
        # the segment before a lower rate reached it: the control goes once more, harmless)
        resend = (segment.scene_cut or looked or self._retell
                  or segment.sampling_rate_fps > self.asr.rate_fps)  # fmt: skip
        controls = self._rate_control(segment.timestamps[-1], resend=resend)
        cut = len(samples) if segment.scene_cut else 0
        moved = self._rebase_at_cut(cut) if self._reuse is None else self._select_model(cut)
        with self._stages.stage("judge"):  # after a move, which makes its gain another request's
            self._judge_phase(samples)
        return gradient + controls + moved

    def _probe_accuracy(self, samples: list[Sample]) -> None:
        """For the dashboard: the device's model and the pretrained one on the newest of these
        samples, where the mirror holds the file the device runs."""
        held = self.mirror.find(self.device.sha256) if self.device.sha256 else None
        if self._probe is None or held is None:
            return
        model = self.mirror.versions()[held]
        self._records.extend(self._probe.measure(model, held, samples, self.subset.classes))

    def _gradient(self, rgb: np.ndarray, timestamp: float) -> list[Outgoing]:
        """OneAdapt: the teacher's DNNGrad on the segment's last frame, for the device to step
        its knobs with (seed 000 §4: one backward pass per interval, on its last frame)."""
        if self._dnngrad is None:
            return []
        grad, utility = self._dnngrad(rgb)
        body, scale = grad.quantized()
        height, width = rgb.shape[:2]
        msg = Gradient(width=width, height=height, scale=scale, utility=utility,
                       timestamp=timestamp)  # fmt: skip
        if self._signer is not None:
            msg = self._signer.sign(self.device_id, msg, body)
        self.stats.gradient_bytes += len(body)
        return self._counted_downlink([Outgoing(msg, body)])

    def _add_samples(self, samples: list[Sample]) -> None:
        self._fresh += len(samples)
        self._unjudged += len(samples)
        for sample in samples:
            self.subset.observe(sample.labels)
            if self._previous_labels is not None:
                phi = phi_score(self._previous_labels, sample.labels, self.subset.classes)
                self.asr.observe(phi)
            self._previous_labels = sample.labels
            self.buffer.add(sample)

    def _cut(self, device_time: float) -> None:
        """A scene cut the device saw at ``device_time``: ASR and ATR start again, as the device
        did (the rate at its maximum, T_update at τ_min), their next step a δt away; no φ
        across the cut, which measures no scene's pace."""
        self.stats.scene_cuts += 1
        self._previous_labels = None
        self._scene_start = device_time
        # a look only where a check, and a move, can follow it
        self._looking = (self._reuse is not None and self.config.recl.look_s > 0
                         and self._move_format() is not None)  # fmt: skip
        self.asr.cut()
        self.atr.cut()
        self._next_rate_update = device_time + self.config.asr.interval_s

    def _rate_control(self, device_time: float, *, resend: bool = False) -> list[Outgoing]:
        """ASR then ATR every δt of the device's video time; a control message on a change,
        or with ``resend`` (the device's rate moved without one)."""
        if self._next_rate_update is None:
            self._next_rate_update = device_time + self.config.asr.interval_s
        before = self.control()
        while device_time >= self._next_rate_update:
            self.atr.update(self.asr.update())
            self._next_rate_update += self.config.asr.interval_s
        after = self.control()
        return [] if after == before and not resend else [self._signed_control(after)]

    def _train(self) -> list[Outgoing]:
        self._phase_due = False
        if len(self.buffer) == 0:
            return []
        fresh, self._fresh = self._fresh, 0
        if (refit := self._active_refit) is not None:  # before this phase trains on them
            refit.observe(self.mirror.data, self.buffer.newest(fresh), self.subset.classes)
        # RECL chose when the samples came (_select_model)
        rebased = self._reuse is None and self._rebase_if_better(fresh)
        trained_from = self._base if rebased else self.mirror.data  # its gain is over this
        held_out = self.config.gate.held_out(fresh, len(self.buffer))
        result: PhaseResult = train_phase(
            self.student,
            self.optimizer,
            self.buffer,
            self.subset.seen,
            self.config.training,
            self._rng,
            held_out,
        )
        self.stats.phases += 1
        for stage, seconds in result.stages.items():
            self._stages.add(f"phase.{stage}", seconds)
        self.stats.training_seconds = [*self.stats.training_seconds[-99:], result.seconds]
        self.phase_ends.append(time.monotonic())
        self.stats.training_seconds_total += result.seconds
        log.info(
            "%s: phase %d in %.1f s, loss %.3f -> %.3f",
            self.device_id,
            self.stats.phases,
            result.seconds,
            result.first_loss,
            result.last_loss,
        )
        fmt = self._update_format()
        if fmt is None:
            return []
        loss = (result.first_loss, result.last_loss)
        with self._stages.stage("gate"):
            passed = self._passes_gate(held_out)
        if not passed:
            gated = UpdateRecord(time.time(), None, fmt.value, 0, "phase", loss, sent=False)
            self._records.append(gated)
            self._judge_later(self.mirror.data, result.seconds)
            return []
        # The weights and optimizer state that make the next version are on disk before it is:
        # a trainer killed at any instant resumes exactly on them (see _restore).
        with self._stages.stage("checkpoint"):
            self.save(making=self.mirror.version + 1)
        with self._stages.stage("write_back"):
            update = self.mirror.advance(self.student, fmt, mask=self.optimizer.mask)
        self._remember_sent()
        self.stats.updates_sent += 1
        self._record_update(update, "phase", loss)
        self._judge_later(trained_from, result.seconds)
        return self._counted_downlink([update, *self._refitted_selection()])

    def _refitted_selection(self) -> list[Outgoing]:
        """An elastic student's OPA selection refitted, when due, as an update of its own
        (``opa.refit``): a zpatch of the metadata it rewrites in place, so a device that takes
        no zpatch keeps the selection it has."""
        refit = self._active_refit
        refitted = None if refit is None else refit.refitted(self.mirror.data)
        if refit is None or refitted is None:
            return []
        self.save(making=self.mirror.version + 1)  # the same weights make that version too
        update = self.mirror.advance_to(refitted)
        self.stats.selector_refits += 1
        self._record_update(update, "selection refit")
        log.info("%s: OPA selection refitted on %d frames", self.device_id, refit.frames)
        return [update]

    @property
    def _active_refit(self) -> SelectorRefit | None:
        """OPA's refit where it runs: an elastic student, ``[opa] refit_phases`` set, and a
        device that takes the zpatch it travels as."""
        if UpdateFormat.ZPATCH.value not in self.device.update_formats:
            return None
        return self._refit

    def _judge_later(self, before: bytes, seconds: float) -> None:
        """For the marginal-gain scheduler: the phase just trained, from ``before`` (the
        device's file, or the base where the phase rebased) to the mirror's latest (the same
        file where the gate held the phase back), to be judged on the next samples
        (``_judge_phase``)."""
        if self.config.recl.scheduler == "marginal-gain":
            self._phase_to_judge = (self.requests, before, self.mirror.data, seconds)

    def _judge_phase(self, samples: list[Sample]) -> None:
        """Algorithm 4 lines 4-9: the last phase's mIoU gain on the newest of ``samples``, its
        model against the one before it. Judged on frames it never trained on (the paper's test
        subset; on its own training frames every phase gains), with no frame held out of
        training: the samples that come next. Not judged when a scene cut or a move came
        between: its gain was for another request."""
        pending, self._phase_to_judge = self._phase_to_judge, None
        if pending is None or pending[0] != self.requests:
            return
        request, before, after, seconds = pending
        gain = 0.0
        if after != before:
            judged, classes = samples[-self.config.recl.samples :], self.subset.classes
            gain = self._judge.score(after, judged, classes) - self._judge.score(
                before, judged, classes
            )
        self._phase_gain = (request, gain, seconds)

    def phase_gain(self, seconds: float | None = None) -> float | None:
        """The mIoU its last judged phase gained per second of training, for the request it
        trains for now (None: no phase of it judged yet, Algorithm 4 lines 10-12).
        ``seconds``: what a phase counts as costing, in place of the time it took."""
        if self._phase_gain is None or self._phase_gain[0] != self.requests:
            return None
        _, gain, took = self._phase_gain
        return gain / max(took if seconds is None else seconds, 1e-9)

    def _rebase_if_better(self, fresh: int) -> bool:
        """Back to the base model and the ``fresh`` samples' scene alone, if the base labels
        them better than the device's model (see ``ams.rebase``); whether it did."""
        rule = self.config.rebase
        if not rule.enabled or fresh == 0 or self.mirror.data == self._base:
            return False
        new = self.buffer.newest(fresh)
        judged, classes = new[-rule.samples :], self.subset.classes
        base = self._judge.score(self._base, judged, classes)
        running = self._judge.score(self.mirror.data, judged, classes)
        if not should_rebase(base, running, rule.margin):
            return False
        self._restart_from(self._base, new[0].timestamp)
        self.stats.rebases += 1
        log.info("%s: rebased after phase %d: the base model scored %.3f against the device's"
                 " %.3f on %d new samples; %d samples kept", self.device_id,
                 self.stats.phases, base, running, len(judged), len(self.buffer))  # fmt: skip
        return True

    def _select_model(self, cut: int = 0) -> list[Outgoing]:
        """RECL's selection (``recl.reuse``), every update window, before the device waits
        for a training slot: the base or an expert of the zoo, where one labels the samples
        since the last phase (none of them trained on yet; since the last scene cut, where
        that came later) better than the device's model (the rebase is its zoo of one). The
        switch leaves at once, an ordinary delta update; training goes on from the chosen
        model (an expert's master weights and optimizer state where the zoo keeps them; the
        base's weights with fresh moments; the last retrained model's, a gated phase's, are
        the student's already). At a scene cut the ``cut``
        samples of the new scene are judged alone, as the rebase rule does (_rebase_at_cut),
        and the device's model may be held as its expert's heir (``ModelReuse.hold``); the
        segment after the cut's, which the device sends ``recl.look_s`` later, is checked on
        the new scene's frames so far."""
        unjudged, self._unjudged = self._unjudged, 0
        fmt = self._move_format()
        if self._reuse is None:
            return []
        if cut:  # whether judged now or not, training from here is not the old scene's expert's
            self._reuse.hold(self.device_id, self.mirror.data, self._running_state)
        # the samples no phase trained on yet, of the scene the device is in now
        new = [s for s in self.buffer.newest(cut or self._fresh)
               if s.timestamp >= self._scene_start]  # fmt: skip
        if unjudged == 0 or not new or fmt is None:
            return []
        retrained = self.mirror.candidate(self.student)
        runs = retrained == self.mirror.data  # the student is the device's model: no gated phase
        choice = self._reuse.select(
            self.device_id, self.mirror.data, new, self.subset.classes,
            self._training_state if runs else lambda: None,
            retrained=None if runs else retrained,
        )  # fmt: skip
        if choice is None:
            return []
        if choice.name != RETRAINED:  # the retrained model is the student's already
            self._restart_from(choice.data, new[0].timestamp, choice.state)
            # the buffer holds the new scene alone: a phase due on the old one is not trained
            self._fresh, self._phase_due = len(new), self._phase_due and not cut
            if choice.name == BASE:
                self.stats.rebases += 1
            else:
                self.stats.reuses += 1
        scores, judged = choice.verdict.scores, min(len(new), self.config.recl.samples)
        log.info("%s: %s scored %.3f against the device's %.3f on %d new samples: the device"
                 " moves to it", self.device_id, choice.name, scores[choice.name],
                 scores[CURRENT], judged)  # fmt: skip
        return self._switch(fmt, choice.name)

    def _rebase_at_cut(self, count: int) -> list[Outgoing]:
        """At a scene cut, the rebase rule on the cut's ``count`` samples alone, at once; where
        the base wins the device goes back to it now rather than at the next phase, and a
        phase due on the old scene's samples, which the buffer forgets, is not trained."""
        fmt = self._move_format()
        if not count or fmt is None:
            return []
        if not self._rebase_if_better(count):
            return []
        self._phase_due, self._fresh = False, count
        return self._switch(fmt, BASE)

    def _move_format(self) -> UpdateFormat | None:
        """The format a move to another model (the base, an expert) goes in; None where none
        may go now: learning paused, or a device that takes no delta."""
        return None if self.paused else self._delta_format()

    def _switch(self, fmt: UpdateFormat, name: str) -> list[Outgoing]:
        """The update that takes the device to the model training goes on from (``name``)."""
        self.save(making=self.mirror.version + 1)  # as a phase's: see _train
        update = self.mirror.advance(self.student, fmt)
        self._remember_sent()
        self.stats.updates_sent += 1
        self.stats.switch_bytes += len(update.body)
        self._record_update(update, name)
        return self._counted_downlink([update])

    def _restart_from(self, data: bytes, since: float, state: dict | None = None) -> None:
        """Train on from the model file ``data`` (and its training ``state``, if known) on the
        samples from ``since`` alone: those of the scene it was chosen for."""
        self._train_from(data, state)
        self.buffer.restart(since)
        self._forget_archived()

    def _passes_gate(self, held_out: int) -> bool:
        """Whether the phase's model may go (see ``ams.gate``); if not, with ``revert``,
        training returns to the weights of the last model sent (the optimizer's moments
        stay)."""
        if held_out == 0:
            return True
        samples = self.buffer.newest(held_out)
        candidate = self.mirror.candidate(self.student)
        classes = self.subset.classes
        verdict = judge(
            self._judge.score(candidate, samples, classes),
            self._judge.score(self.mirror.data, samples, classes),
            self.config.gate.margin,
        )
        if verdict.passed:
            return True
        self.stats.phases_gated += 1
        log.info("%s: phase %d gated: mIoU %.3f against the device's %.3f on %d held-out"
                 " samples", self.device_id, self.stats.phases, verdict.candidate,
                 verdict.running, held_out)  # fmt: skip
        if self.config.gate.revert:
            self.student.load_state_dict(self._sent_weights)
        return False

    def _update_format(self) -> UpdateFormat | None:
        configured = self.config.updates.format
        if configured.value in self.device.update_formats:
            return configured
        return self._delta_format()

    def _counted_downlink(self, messages: list[Outgoing]) -> list[Outgoing]:
        """``messages``, their bytes added to the session's downlink total."""
        self.stats.bytes_down += sum(len(m.body) for m in messages)
        return messages

    # -- metrics and checkpoints ---------------------------------------------------------------

    def metrics(self) -> dict[str, object]:
        phases = self.stats.training_seconds
        return {
            "device_id": self.device_id,
            "mirror_version": self.mirror.version,
            "device_version": self.device.version,
            "sampling_rate_fps": self.asr.rate_fps,
            "t_update_s": self.atr.t_update_s,
            "training_seconds_last": phases[-1] if phases else None,
            "training_seconds_mean": float(np.mean(phases)) if phases else None,
            "buffer_samples": len(self.buffer),
            "classes": self.subset.classes,
            "paused": self.paused,
            "sampling_bounds": [self.asr.config.min_fps, self.asr.config.max_fps],
            **{k: v for k, v in asdict(self.stats).items() if k != "training_seconds"},
        }

    def _archive_segment(
        self, segment: Segment, h264: bytes, labels: np.ndarray, soft: np.ndarray | None
    ) -> None:
        packed = zstandard.ZstdCompressor(level=3).compress(labels.tobytes())
        self._archive.append(_Archived(segment, h264, packed, _pack_scores(soft)))
        self._forget_archived()

    def _forget_archived(self) -> None:
        """Archived segments whose samples the buffer no longer keeps leave the archive."""
        newest = self._archive[-1].segment.timestamps[-1] if self._archive else 0.0
        start = max(newest - self.config.training.horizon_s, self.buffer.start)
        while self._archive and self._archive[0].segment.timestamps[-1] < start:
            self._archive.popleft()

    def save(self, making: int | None = None) -> Path:
        """Write the checkpoint (atomically); the mirror's versions are already on disk.
        ``making``: the version these weights are about to make (not on disk yet)."""
        state = {
            "student": {k: v.detach().cpu() for k, v in self.student.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "asr": self.asr.state_dict(),
            "atr": self.atr.state_dict(),
            # numpy arrays travel as tensors: the checkpoint loads with weights_only (no pickle)
            "subset": torch.from_numpy(self.subset.counts.copy()),
            "device": asdict(self.device),
            "stats": asdict(self.stats),
            "archive": [
                (a.segment.model_dump_json(), a.h264, a.labels, a.soft) for a in self._archive
            ],
            "previous_labels": _tensor_or_none(self._previous_labels),
            "fresh": self._fresh,
            "scene_start": self._scene_start,
            "buffer_start": self.buffer.start,
            "next_rate_update": self._next_rate_update,
            "clock": self._clock.state_dict(),
            "rng": self._rng.bit_generator.state,
            "saved_at": time.time(),
            "paused": self.paused,
            # the version the weights above made, or are about to make
            "mirror_version": self.mirror.version if making is None else making,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        path = self.directory / CHECKPOINT
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getvalue())
        return path

    def restore(self) -> bool:
        """Resume from the checkpoint, if there is one; returns whether there was. A damaged
        or foreign checkpoint is set aside (``session.refused``, counted): training starts
        from the mirror's latest file, the last one sent, never from nothing."""
        path = self.directory / CHECKPOINT
        if not path.is_file():
            return False
        self._retell = True  # another process told the device its rates, maybe after saving
        try:
            # weights_only: tensors, containers and plain values; a checkpoint cannot run code
            state = torch.load(path, map_location=self.config.training.device, weights_only=True)
            self._restore(state)
            self._resumed = self.device.known
        except Exception as exc:  # any unusable checkpoint; the mirror's files are the truth
            log.error("%s: checkpoint %s refused (%s): training from the mirror", self.device_id,
                      path, exc)  # fmt: skip
            os.replace(path, path.with_suffix(".refused"))
            damaged = len(self.mirror.damaged)
            self.stats = SessionStats(checkpoints_refused=1, mirror_files_damaged=damaged)
            self._train_from_mirror()
            return False
        return True

    def _restore(self, state: dict) -> None:
        self.asr.load_state_dict(state["asr"])
        self.atr.load_state_dict(state["atr"])
        self.subset.counts = state["subset"].cpu().numpy()
        device = dict(state["device"])
        device["update_formats"] = tuple(device["update_formats"])
        if device.get("previous") is not None:
            device["previous"] = tuple(device["previous"])
        self.device = DeviceView(**device)
        self.stats = SessionStats(**state["stats"])
        self.stats.mirror_files_damaged += len(self.mirror.damaged)
        previous = state["previous_labels"]
        self._previous_labels = None if previous is None else previous.cpu().numpy()
        self._next_rate_update = state["next_rate_update"]
        self._fresh = int(state.get("fresh", 0))  # not in checkpoints before the gate
        self._scene_start = float(state.get("scene_start", -float("inf")))  # nor this
        self.paused = bool(state.get("paused", False))  # nor this before the dashboard
        self._clock.load_state_dict(state["clock"])
        self._rng.bit_generator.state = state["rng"]
        self.buffer.start = float(state.get("buffer_start", -float("inf")))  # since the rebase
        for segment_json, h264, packed, *soft in state["archive"]:  # no scores before KL
            segment = Segment.model_validate_json(segment_json)
            self._restore_segment(segment, h264, packed, soft[0] if soft else None)
        # The weights of the mirror's last version, or of the next one, killed before its file
        # was written (never sent: the next update still starts from the last file sent).
        if state.get("mirror_version") in (self.mirror.version, self.mirror.version + 1):
            self.student.load_state_dict(state["student"])
            self.optimizer.load_state_dict(state["optimizer"])
            self._remember_sent()
        else:  # an older checkpoint (or a damaged mirror file): those weights are older
            log.warning(
                "%s: checkpoint of version %s, mirror at %d: training from the mirror's file",
                self.device_id, state.get("mirror_version"), self.mirror.version,
            )  # fmt: skip
            self.stats.stale_checkpoints += 1
            self._train_from_mirror()

    def _restore_segment(
        self, segment: Segment, h264: bytes, packed: bytes, soft: bytes | None
    ) -> None:
        size = self.config.training.frame_size
        raw = zstandard.ZstdDecompressor().decompress(packed)
        labels = np.frombuffer(raw, np.uint8).reshape(-1, *size)
        frames = decode_frames(h264, segment.timestamps, size=(segment.width, segment.height))
        for sample in labelled_samples(frames, labels, size, _unpack_scores(soft)):
            self.buffer.add(sample)
        self._archive.append(_Archived(segment, h264, packed, soft))


def open_inbox(directory: Path, config: TrainerConfig) -> Spool:
    """A device's segments waiting to be labelled, on disk: one more than the session queues,
    so the session, not the spool, decides which to drop."""
    return Spool(directory / "inbox", max_bytes=2**31, max_entries=config.max_pending_segments + 1)


def store_segment(inbox: Spool, envelope: Envelope) -> SpoolEntry:
    """Write a received segment to ``inbox``; returns once it is durable."""
    header = envelope.header
    encoded = encode(
        envelope.msg, device_id=header.device_id, seq=header.seq, boot=header.boot,
        body=envelope.body,
    )  # fmt: skip
    return inbox.put(MessageType.SEGMENT, encoded)


def _pack_scores(soft: np.ndarray | None) -> bytes | None:
    """The teacher's scores as zstd of an .npy (dtype and shape with them, no pickle)."""
    if soft is None:
        return None
    raw = io.BytesIO()
    np.save(raw, soft, allow_pickle=False)
    return zstandard.ZstdCompressor(level=3).compress(raw.getvalue())


def _unpack_scores(packed: bytes | None) -> np.ndarray | None:
    if packed is None:
        return None
    raw = zstandard.ZstdDecompressor().decompress(packed)
    return np.load(io.BytesIO(raw), allow_pickle=False)


def _to_cpu(state: dict[str, object]) -> dict[str, object]:
    def move(value: object) -> object:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return {k: move(v) for k, v in state.items()}


def _tensor_or_none(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))
