"""OneAdapt's loop on the device: each DNNGrad the trainer sends moves the knobs one eq. 2 step
(seed 000 §3.2), on a thread of its own, never in the frame loop.

The frame loop hands over each sampled frame (a reference, kept for the last ``frames``); the
MQTT thread hands over each verified gradient (the latest waits, an older one not yet taken is
dropped and counted). The worker re-encodes the frame the gradient was taken on at the
perturbed knobs (``input_grad``), steps, and gives the new knobs to the segment encoder. A
control from the trainer sets the knobs outright, and the steps go on from there.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from edge_runtime.frames import Frame
from edge_runtime.oneadapt.knobs import UnfitBounds
from edge_runtime.oneadapt.step import step
from edge_runtime.profile import KnobsSection, OneAdaptSection
from shared_schema.counters import Counters
from shared_schema.gradient import GradientMap
from shared_schema.messages import EncoderKnobs

log = logging.getLogger(__name__)


class KnobAdapter:
    def __init__(
        self,
        config: OneAdaptSection,
        bounds: KnobsSection,
        knobs: EncoderKnobs,
        apply: Callable[[EncoderKnobs], None],
        counters: Counters,
    ) -> None:
        self.config = config
        self._bounds = bounds
        self._knobs = knobs  # in force now
        self._apply = apply
        self.counters = counters
        self._frames: OrderedDict[float, Frame] = OrderedDict()
        self._waiting: tuple[float, GradientMap, float, float] | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="oneadapt", daemon=True)
        self._worker.start()

    def sampled(self, frame: Frame) -> None:
        """A frame the sampler took (the frame loop's call: a dict insert, nothing more)."""
        with self._cond:
            self._frames[frame.timestamp] = frame
            while len(self._frames) > self.config.frames:
                self._frames.popitem(last=False)

    @property
    def latest(self) -> float | None:
        """The timestamp of the newest sampled frame kept, if any."""
        with self._cond:
            return next(reversed(self._frames), None)

    def offer(self, timestamp: float, grad: GradientMap, utility: float, fps: float) -> None:
        """The trainer's DNNGrad on the frame sampled at ``timestamp``."""
        with self._cond:
            if self._waiting is not None:
                self.counters.inc("oneadapt.superseded")
            self._waiting = (timestamp, grad, utility, fps)
            self._cond.notify()

    def reset(self, knobs: EncoderKnobs) -> None:
        """The trainer set the knobs: the next step starts from them."""
        with self._cond:
            self._knobs = knobs

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join(timeout)

    def _run(self) -> None:
        while (job := self._next()) is not None:
            frame, knobs, grad, utility, fps = job
            stepped = self._step(frame, knobs, grad, utility, fps)
            if stepped is None:
                continue
            with self._cond:
                if self._knobs is not knobs:
                    continue  # a control set other knobs meanwhile: they win
                self._knobs = stepped
            self._apply(stepped)
            self.counters.inc("oneadapt.steps")

    def _next(self) -> tuple[Frame, EncoderKnobs, GradientMap, float, float] | None:
        """The next gradient with its frame and the knobs in force (None: closed)."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._waiting is not None)
                if self._closed or self._waiting is None:
                    return None
                (timestamp, grad, utility, fps), self._waiting = self._waiting, None
                frame, knobs = self._frames.get(timestamp), self._knobs
            if frame is not None:
                return frame, knobs, grad, utility, fps
            self.counters.inc("oneadapt.frame_missing")  # older than the frames kept

    def _step(
        self, frame: Frame, knobs: EncoderKnobs, grad: GradientMap, utility: float, fps: float
    ) -> EncoderKnobs | None:
        try:
            stepped, g = step(self.config, self._bounds, frame, knobs, grad, utility, fps)
        except UnfitBounds as e:  # the profile's error: one line, counted, the knobs kept
            log.error("oneadapt: %s", e)
            self.counters.inc("oneadapt.unfit")
            return None
        except Exception:  # a bug in a step must not stop the device
            log.exception("oneadapt: the knob step failed")
            self.counters.inc("oneadapt.errors")
            return None
        log.debug("oneadapt: AccGrad %s, kbps gradient %s: %s", np.round(g.acc, 4),
                  np.round(g.kbps, 1), stepped)  # fmt: skip
        return stepped
