"""How a new model replaces the running one: the handshake of the slots' worker and the frame
loop (SPEC §5), all of it in this file.

Two threads take part. The worker (``ModelSlots`` in model_slots.py) turns a ``model`` or
``update`` message into a verified, written and loaded model; the frame loop
(``EdgeRuntime.process`` in runtime.py) runs every frame. They meet only in a ``Handover``, and
the frame loop never waits for the worker:

1. Offer: the worker offers the loaded model to the frame loop as a ``Trial``
   (``Handover.try_out``), as a frame ends, and waits for the verdict.
2. Claim and decide: at the start of its next frame the frame loop claims the trial and runs
   that frame on the new model, its warm-up (``warm_up``), which refuses a model that cannot
   run a frame or whose output is unusable next to the running model's (``invalid_output``).
   The verdict wakes the worker up. A refused model's output never leaves: the frame runs
   again on the running model. An accepted one runs from that frame on (its output is the
   frame's result), so a good model's warm-up costs the frame loop nothing and competes with
   none of its inferences, and the version the frames report moves forward (it goes back only
   where step 4 fails).
3. Withdraw: when no frame claims the trial within ``TRIAL_TIMEOUT_S`` (no frames flow), the
   worker withdraws it and runs ``warm_up`` itself, on the frame loop's latest frame (the one
   inference off the frame loop, when it is idle). Exactly one of claim and withdraw succeeds,
   so a model is warmed up once.
4. Record: the worker records an accepted model as active in ``slots.json``. Should that
   fail, it hands the model ``slots.json`` still names back to the frame loop (step 5), so
   what runs is what a restart would run.
5. Hand over: the worker hands the recorded model over (``Handover.hand_over``), and the frame
   loop takes it at the start of its next frame (``Handover.between_frames``); for a model its
   own warm-up frame accepted, that only confirms what already runs. The running model changes
   in one place, ``Handover._run``, on the frame loop's thread. A rollback is steps 4 and 5
   alone.
6. Retire: the engine of the model that falls out of both slots comes with the hand-over; the
   frame loop closes it between frames, once it runs the new model, so no engine is closed
   mid-inference.
7. The worker acknowledges. ``Handover.upcoming`` (the model the next frame runs) already names
   the new model, so what the device reports agrees with its acknowledgements even when no
   frames flow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_runtime.backends.base import Engine
from shared_schema.tflite_file import TFLiteFile

TRIAL_TIMEOUT_S = 2.0  # how long a new model waits for a frame before the worker warms it up
# How long the worker waits for a frame to end before a patch, an engine build or a trial;
# frames at 4 fps or more end sooner.
FRAME_END_TIMEOUT_S = 0.25


@dataclass(frozen=True)
class LoadedModel:
    """What the frame loop runs: an engine and the identity of its model, swapped as one."""

    engine: Engine
    version: int | None
    sha256: str
    slot: str
    data: bytes
    layout: TFLiteFile | None = None  # parsed once, reused by the value updates that follow


def invalid_output(labels: np.ndarray, running_labels: np.ndarray) -> str | None:
    """Why a new model's warm-up output is unusable next to the running model's, or None."""
    if labels.shape != running_labels.shape:
        return (
            f"warm-up output has shape {labels.shape}, the running model's {running_labels.shape}"
        )
    if _classes(labels) == 1 and _classes(running_labels) > 1:
        return "warm-up output is all one class where the running model's is not"
    return None


def _classes(labels: np.ndarray) -> int:
    """0, 1, or 2 for two classes or more. Not np.unique: sorting a 513x513 map takes 5 ms of
    the warm-up frame, a comparison 0.06 ms."""
    if labels.size == 0:
        return 0
    return 1 if (labels == labels.flat[0]).all() else 2


def warm_up(
    engine: Engine, rgb: np.ndarray, running_labels: np.ndarray | None
) -> tuple[np.ndarray | None, str | None]:
    """A new model's first inference, on a frame the running model labelled ``running_labels``
    (None: no frame ran yet to compare with). Returns its label map and why the model is
    refused (None: accepted); a model that cannot run a frame is refused, never fatal."""
    try:
        labels = engine.infer(rgb)
        return labels, None if running_labels is None else invalid_output(labels, running_labels)
    except Exception as exc:
        return None, f"warm-up failed: {exc}"


class Trial:
    """A new model offered to the frame loop, whose next frame on it is the warm-up.

    The frame loop claims it and decides; the worker withdraws it when no frame came in time.
    Exactly one of claim and withdraw succeeds.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.reason: str | None = None  # why the model was refused; None: accepted
        self._taken: str | None = None
        self._lock = threading.Lock()
        self._decided = threading.Event()

    def claim(self) -> bool:
        return self._take("claimed")

    def withdraw(self) -> bool:
        return self._take("withdrawn")

    def _take(self, by: str) -> bool:
        with self._lock:
            if self._taken is not None:
                return False
            self._taken = by
            return True

    def decide(self, reason: str | None) -> None:
        self.reason = reason
        self._decided.set()

    def wait(self, timeout: float | None) -> bool:
        return self._decided.wait(timeout)


class Handover:
    """Where the worker and the frame loop meet: the running model, a trial on offer, a model
    handed over and not yet taken, the engines to close, and the latest frame."""

    def __init__(self, running: LoadedModel, *, trial_timeout_s: float = TRIAL_TIMEOUT_S) -> None:
        self._running = running
        self._trial_timeout_s = trial_timeout_s  # 0 where no frame loop runs (tests)
        self._trial: Trial | None = None
        self._next: LoadedModel | None = None
        self._retired: list[Engine] = []
        self._latest: tuple[np.ndarray, np.ndarray] | None = None  # (input, labels)
        self._frame_done = threading.Event()  # set as each frame's inference ends
        self._lock = threading.Lock()

    @property
    def running(self) -> LoadedModel:
        """The model the frame loop runs now."""
        return self._running

    @property
    def upcoming(self) -> LoadedModel:
        """The model the next frame runs: one handed over and not yet taken, or the running one."""
        with self._lock:
            return self._running if self._next is None else self._next

    # -- the worker's side ----------------------------------------------------------------------

    def try_out(self, model: LoadedModel) -> str | None:
        """Steps 1 to 3: the new model's warm-up, on the frame loop's next frame or, when none
        comes in time, here. Returns why the model is refused, or None."""
        # Offered as a frame ends: the warm-up (a first inference, slower) is then never the
        # frame that the engine's load just slowed down too.
        self.after_next_frame()
        trial = Trial(model)
        with self._lock:
            self._trial = trial
        if trial.wait(self._trial_timeout_s) or not trial.withdraw():
            trial.wait(None)  # claimed: the frame loop is deciding right now
            return trial.reason
        latest = self._latest
        if latest is None:
            return None  # no frame ever ran: nothing to warm up on
        return warm_up(model.engine, *latest)[1]

    def after_next_frame(self) -> None:
        """Return once the frame loop ends a frame's inference (or no frame came in time).

        Work begun then has the gap before the next frame, where a paced frame loop leaves the
        cores idle, instead of competing with that frame's inference for them.
        """
        self._frame_done.clear()
        self._frame_done.wait(min(self._trial_timeout_s, FRAME_END_TIMEOUT_S))

    def hand_over(self, model: LoadedModel, retired: Engine | None = None) -> None:
        """Step 5 (and 6): the frame loop takes ``model`` before its next frame, then closes
        ``retired``. Call only once ``slots.json`` names ``model``."""
        with self._lock:
            self._next = model
            if retired is not None:
                self._retired.append(retired)

    # -- the frame loop's side ------------------------------------------------------------------

    def between_frames(self) -> LoadedModel:
        """Take a handed-over model, then close retired engines (none is mid-inference between
        two frames); returns the model to run. Cheap when there is nothing to do."""
        with self._lock:
            if self._next is not None:
                self._run(self._next)
            retired, self._retired = self._retired, []
        for engine in retired:
            engine.close()
        return self._running

    def infer(self, prepare: Callable[[LoadedModel], np.ndarray]) -> tuple[LoadedModel, np.ndarray]:
        """This frame's label map and the model that made it: a claimed trial's, when this
        frame is its warm-up and it passes, otherwise the running model's. ``prepare`` gives
        the frame as a model's input."""
        result = self._warm_up_frame(prepare)
        if result is None:
            rgb = prepare(self._running)
            result = self._running, rgb, self._running.engine.infer(rgb)
        model, rgb, labels = result
        self.record_frame(rgb, labels)
        self._frame_done.set()
        return model, labels

    def record_frame(self, rgb: np.ndarray, labels: np.ndarray) -> None:
        """The latest frame's input and labels: the next warm-up compares with them."""
        self._latest = (rgb, labels)

    def _warm_up_frame(
        self, prepare: Callable[[LoadedModel], np.ndarray]
    ) -> tuple[LoadedModel, np.ndarray, np.ndarray] | None:
        """Step 2: (model, input, labels) of a trial that this frame warmed up and that passed;
        None when no trial was on offer or it was refused."""
        with self._lock:
            trial, self._trial = self._trial, None
        if trial is None or not trial.claim():
            return None
        reason: str | None = "warm-up failed: no verdict"
        try:  # whatever happens, the worker waiting for the verdict gets one
            try:
                rgb = prepare(trial.model)
            except Exception as exc:  # refused; the running model gets the frame
                reason = f"warm-up failed: the frame cannot be scaled to its input: {exc}"
                return None
            labels, reason = warm_up(trial.model.engine, rgb, self._latest_labels())
            if labels is None or reason is not None:
                return None
            with self._lock:  # before the verdict: any hand-over of the worker's comes after
                self._run(trial.model)
            return trial.model, rgb, labels
        finally:
            trial.decide(reason)

    def _run(self, model: LoadedModel) -> None:
        """The one assignment of the running model (frame loop only, ``_lock`` held)."""
        self._running, self._next = model, None

    def _latest_labels(self) -> np.ndarray | None:
        latest = self._latest
        return None if latest is None else latest[1]
