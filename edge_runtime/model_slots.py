"""Double-buffered model slots: how a model changes on the device (SPEC §5).

Two slots, A and B, each a model file in ``slot_dir`` and, once loaded, an engine in memory.
One is active (the frame loop runs it); updates go to the other. ``submit`` queues a ``model``
or ``update`` message for a worker thread that, off the frame loop:

1. checks the base (content hash, and version once the device has one), the signature when a
   public key is configured, and that the result hashes to what the message promises
   (``verify_and_apply``);
2. loads it (on a builder thread of normal priority: the engine's own threads will run every
   frame) and has it warmed up, refusing a model whose output is invalid;
3. writes the accepted file to the standby slot (temp file, fsync, rename): a refused model
   never overwrites the previous one, which a rollback needs;
4. records the standby slot as active in ``slots.json`` (atomic write), hands the new model to
   the frame loop and acknowledges.

The warm-up and the hand-over are the handshake with the frame loop, told step by step in
swap.py. The patch of step 1, the load of step 2 and its trial each start as a frame's
inference ends (``Handover.after_next_frame``): the work in the gap a paced frame loop leaves
before the next frame, where it competes with as little inference as it can on a small CPU,
and the warm-up on a frame the load did not slow down already.

A power cut at any point leaves ``slots.json`` naming a slot whose file matches its recorded
hash, or, failing that, the other slot or the profile's initial model: the device always
restarts on a verified model. The previous model stays loaded for an instant rollback.

Updates whose base is ahead of the device (a reordered QoS 1 delivery) wait in a small stash
until their base arrives; every rejection that a resync can fix says so (``resync_from``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import NoReturn

from edge_runtime.backends.base import Engine
from edge_runtime.durable import atomic_write, remove_partial_writes
from edge_runtime.priority import lower_thread_priority
from edge_runtime.swap import Handover, LoadedModel
from shared_schema.counters import Counters
from shared_schema.envelope import Envelope, sha256_hex
from shared_schema.messages import Ack, AckReason, Control, Gradient, Model, Update
from shared_schema.signing import Keyring
from shared_schema.tflite_file import TFLiteFile
from shared_schema.update_formats import ResultHashMismatch, UpdateFormatError, verify_and_apply

log = logging.getLogger(__name__)

STATE_FILE = "slots.json"
SLOTS = ("A", "B")
MAX_STASHED = 8


class _Builder:
    """Builds engines on a thread started at normal priority: an engine's inference threads
    inherit their creator's priority, and these will run every frame once swapped in."""

    def __init__(self, open_engine: Callable[[bytes], Engine]) -> None:
        self._open_engine = open_engine
        self._jobs: queue.Queue[tuple[bytes, Future[Engine]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="engine-builder", daemon=True)
        self._thread.start()

    def build(self, data: bytes) -> Engine:
        future: Future[Engine] = Future()
        self._jobs.put((data, future))
        return future.result()

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            data, future = job
            try:
                future.set_result(self._open_engine(data))
            except BaseException as exc:
                future.set_exception(exc)


class Rejected(Exception):
    def __init__(self, reason: AckReason, detail: str, resync: bool) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.resync = resync


class ModelSlots:
    def __init__(
        self,
        slot_dir: Path,
        *,
        initial_model: Path,
        open_engine: Callable[[bytes], Engine],
        device_id: str,
        keyring: Keyring | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.slot_dir = Path(slot_dir)
        self.initial_model = Path(initial_model)
        self._open_engine = open_engine
        self.device_id = device_id
        self.keyring = keyring  # the trainer keys signatures must verify against; None: unsigned
        self.counters = counters or Counters()
        self.active: LoadedModel | None = None
        self.previous: LoadedModel | None = None
        self._stash: dict[int, Envelope] = {}
        # Seconds from taking a message to the swap (patch, verify, write, load, warm-up).
        self.apply_seconds: deque[float] = deque(maxlen=256)
        self._handling_since = 0.0
        self._queue: queue.Queue[Envelope | threading.Event | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._handover: Handover  # set by start(), before the worker that uses it exists
        self._send_ack: Callable[[Ack], object] = lambda ack: None
        self._builder: _Builder | None = None

    # -- start-up ----------------------------------------------------------------------------

    def load(self) -> LoadedModel:
        """The model to start with: the recorded active slot if its file is intact."""
        self.slot_dir.mkdir(parents=True, exist_ok=True)
        if remove_partial_writes(self.slot_dir):
            log.warning("slots: removed a write a power cut interrupted")
        state = self._read_state()
        active = state.get("active")
        for slot in [active, *(s for s in SLOTS if s != active)]:
            model = self._load_slot(slot, state.get(slot))
            if model is not None:
                if slot != active:
                    self.counters.inc("slots.recovered")
                    log.error("slots: active slot %s unusable, recovered slot %s", active, slot)
                    self._write_state(model, state.get(active))
                self.active = model
                return model
        return self._load_initial()

    def _load_initial(self) -> LoadedModel:
        try:
            data = self.initial_model.read_bytes()
        except OSError as exc:
            raise FileNotFoundError(
                f"model.initial {self.initial_model}: {exc.strerror or exc}"
            ) from exc
        path = self._slot_path("A")
        atomic_write(path, data)
        model = LoadedModel(self._open_engine(data), None, sha256_hex(data), "A", data)
        self._write_state(model, None)
        self.active = model
        log.info("slots: started from the initial model %s", self.initial_model.name)
        return model

    def _load_slot(self, slot: str | None, record: dict | None) -> LoadedModel | None:
        if slot not in SLOTS or not record:
            return None
        try:
            data = self._slot_path(slot).read_bytes()
            if sha256_hex(data) != record["sha256"]:
                raise ValueError("file does not match its recorded sha256")
            return LoadedModel(
                self._open_engine(data), record["version"], record["sha256"], slot, data
            )
        except (OSError, ValueError, KeyError) as exc:
            log.error("slots: slot %s is unusable: %s", slot, exc)
            return None

    # -- the worker ----------------------------------------------------------------------------

    def start(self, handover: Handover, *, send_ack: Callable[[Ack], object]) -> None:
        """Begin applying submitted messages (call from a thread of normal priority); new
        models reach the frame loop through ``handover`` (swap.py)."""
        self._handover, self._send_ack = handover, send_ack
        self._builder = _Builder(self._open_engine)
        self._worker = threading.Thread(target=self._run, name="model-slots", daemon=True)
        self._worker.start()

    def submit(self, envelope: Envelope) -> None:
        """Queue a model, update or control (rollback) message; returns at once."""
        self._queue.put(envelope)

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        if self._builder is not None:
            self._builder.stop()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until everything submitted so far has been handled (for tests and tools)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _run(self) -> None:
        lower_thread_priority()  # verifying and writing may take a while; a frame may not
        while (item := self._queue.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
            else:
                self._handle(item)

    def _handle(self, envelope: Envelope) -> None:
        msg = envelope.msg
        self._handling_since = time.perf_counter()
        try:
            if isinstance(msg, Update):
                self._handle_update(envelope, msg)
            elif isinstance(msg, Model):
                self._handle_model(envelope, msg)
            elif isinstance(msg, Control) and msg.rollback_to is not None:
                self._rollback(msg.rollback_to)
            else:
                return
            self._ack(envelope, ok=True)
        except Rejected as rejection:
            self.counters.inc(f"slots.rejected.{rejection.reason.value}")
            log.warning("slots: rejected %s: %s", msg.type, rejection.detail)
            self._ack(envelope, ok=False, rejection=rejection)
        except Exception as exc:  # e.g. a full disk: keep serving, let the trainer resync
            self.counters.inc("slots.internal_errors")
            log.exception("slots: failed to apply %s", msg.type)
            failure = Rejected(AckReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", True)
            self._ack(envelope, ok=False, rejection=failure)

    # -- models and updates ----------------------------------------------------------------------

    def _handle_update(self, envelope: Envelope, update: Update) -> None:
        active = self._active()
        if self._is_current(update.new_version, update.result_sha256):
            return  # a QoS 1 duplicate of what already runs: acknowledge again
        if update.base_sha256 != active.sha256:
            self._base_mismatch(envelope, update, active)
        if active.version is not None and update.base_version != active.version:
            raise Rejected(AckReason.BASE_MISMATCH, "base version differs", resync=True)
        # new_version > base_version (the message's own rule) = the running one: never stale
        self._check_signature(update, envelope)
        self._handover.after_next_frame()
        try:
            result = verify_and_apply(update, active.layout or active.data, envelope.body)
        except ResultHashMismatch as exc:
            raise Rejected(AckReason.BAD_HASH, str(exc), resync=True) from exc
        except UpdateFormatError as exc:
            raise Rejected(AckReason.BAD_PAYLOAD, str(exc), resync=True) from exc
        self._install(result.data, update.new_version, result.layout)
        self._apply_stashed()

    def _base_mismatch(self, envelope: Envelope, update: Update, active: LoadedModel) -> NoReturn:
        # Without a version of its own (the initial model) nothing can be behind the device.
        ahead = active.version is None or update.base_version > active.version
        if ahead and len(self._stash) < MAX_STASHED:
            # Applied as soon as its base arrives; the trainer may resync meanwhile.
            self._stash[update.base_version] = envelope
            self.counters.inc("slots.stashed")
        reason = AckReason.MISSING_UPDATE if ahead else AckReason.BASE_MISMATCH
        raise Rejected(
            reason,
            f"update applies to version {update.base_version}, device runs "
            f"{active.version} ({active.sha256[:12]})",
            resync=True,
        )

    def _apply_stashed(self) -> None:
        version = self._active().version
        follow = self._stash.pop(version, None) if version is not None else None
        if follow is not None:
            self._handle(follow)
        # Anything the device has moved past can never apply.
        for base in [b for b in self._stash if version is not None and b < version]:
            del self._stash[base]

    def _handle_model(self, envelope: Envelope, model: Model) -> None:
        if self._is_current(model.version, envelope.header.body_sha256):
            return
        self._refuse_stale(model.version)
        self._check_signature(model, envelope)
        self._install(envelope.body, model.version)
        self._stash.clear()

    def _refuse_stale(self, version: int) -> None:
        """Versions only move forward: a replayed older model, signed or not, never installs.
        Going back is a rollback, which names the version (``Control.rollback_to``)."""
        running = self._active().version
        if running is not None and version <= running:
            raise Rejected(
                AckReason.STALE_VERSION,
                f"version {version} is not newer than the running {running}",
                resync=True,
            )

    def _is_current(self, version: int, sha256: str) -> bool:
        active = self._active()
        return active.version == version and active.sha256 == sha256

    def _check_signature(self, msg: Model | Update, envelope: Envelope) -> None:
        reason = self.refusal(envelope)
        if reason == AckReason.EXPIRED:  # the trainer sends a fresh one
            raise Rejected(reason, f"signature expired at {msg.expires_at}", resync=True)
        if reason is not None:
            raise Rejected(reason, "signature does not verify", resync=False)

    def refusal(self, envelope: Envelope) -> AckReason | None:
        """Why a model, update, control or gradient is refused: not signed by a trusted key, or
        expired; None if it is (always, unsigned)."""
        msg = envelope.msg
        assert isinstance(msg, Model | Update | Control | Gradient)
        if self.keyring is None:
            return None
        return self.keyring.refusal(self.device_id, msg, envelope.header.body_sha256)

    def _install(self, data: bytes, version: int, layout: TFLiteFile | None = None) -> None:
        active = self._active()
        standby = SLOTS[1 - SLOTS.index(active.slot)]
        self._handover.after_next_frame()
        try:
            engine = self._builder.build(data)  # type: ignore[union-attr]  # worker: started
        except Exception as exc:  # any back-end failure to load means: not a usable model
            raise Rejected(AckReason.INVALID_MODEL, f"cannot load: {exc}", resync=False) from exc
        model = LoadedModel(engine, version, sha256_hex(data), standby, data, layout)
        refused = self._handover.try_out(model)
        if refused is not None:
            engine.close()  # no frame runs it: a trial's frame decides only once it is done
            raise Rejected(AckReason.INVALID_MODEL, refused, resync=False)
        # Only an accepted model reaches the disk: the standby slot holds the previous model, the
        # one a rollback needs, until then.
        try:
            atomic_write(self._slot_path(standby), data)
            self._write_state(model, self._record(active))
        except BaseException:
            self._handover.hand_over(active, retired=engine)  # run what slots.json names
            raise
        self._swap(model)
        log.info("slots: running version %s (slot %s, %s)", version, standby, model.sha256[:12])

    def _swap(self, model: LoadedModel) -> None:
        retired = self.previous
        self.previous, self.active = self.active, model
        retire = retired is not None and retired.engine is not model.engine
        self._handover.hand_over(model, retired=retired.engine if retire else None)
        self.counters.inc("slots.swaps")
        self.apply_seconds.append(time.perf_counter() - self._handling_since)

    def _rollback(self, version: int) -> None:
        previous = self.previous
        if previous is None or previous.version != version:
            raise Rejected(
                AckReason.UNKNOWN_VERSION,
                f"no loaded model of version {version} to roll back to",
                False,
            )
        self._write_state(previous, self._record(self._active()))
        self.previous, self.active = self.active, previous
        self._handover.hand_over(previous)
        self.counters.inc("slots.rollbacks")

    # -- acknowledgements and state ----------------------------------------------------------------

    def _ack(self, envelope: Envelope, *, ok: bool, rejection: Rejected | None = None) -> None:
        active = self._active()
        self._send_ack(
            Ack(
                ref_type=envelope.type.value,
                ref_seq=envelope.header.seq,
                ok=ok,
                reason=None if ok or rejection is None else rejection.reason,
                detail="" if rejection is None else rejection.detail[:1024],
                model_version=active.version,
                model_sha256=active.sha256,
                resync_from=active.version if rejection is not None and rejection.resync else None,
            )
        )

    def _active(self) -> LoadedModel:
        if self.active is None:
            raise RuntimeError("load() must run before models are applied")
        return self.active

    def _slot_path(self, slot: str) -> Path:
        return self.slot_dir / f"slot_{slot}.model"

    @staticmethod
    def _record(model: LoadedModel) -> dict:
        return {"version": model.version, "sha256": model.sha256}

    def _write_state(self, active: LoadedModel, other: dict | None) -> None:
        other_slot = SLOTS[1 - SLOTS.index(active.slot)]
        state = {"active": active.slot, active.slot: self._record(active), other_slot: other}
        atomic_write(self.slot_dir / STATE_FILE, json.dumps(state, indent=1).encode())

    def _read_state(self) -> dict:
        try:
            state = json.loads((self.slot_dir / STATE_FILE).read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}
