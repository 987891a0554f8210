"""OPA's selection kept up in the AMS loop. Every phase changes the sub-networks, so their
accuracies drift from the predictor's lines (and the head's confidences from the estimator's
fit): the session measures each phase's new samples on the model the device ran when they
came, before any phase trains on them (the device's view: frames its model never saw), keeps
the newest few dozen, and every few phases refits the selection on them and writes it into the
model in place (`selector_in_place`); the session sends that as an update of its own, a zpatch of
the metadata, after the phase's qdelta."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

from cloud_trainer.opa.config import OpaConfig
from cloud_trainer.opa.fit import Measurements, fit_selector, measure, selector_in_place
from cloud_trainer.sample_buffer import Sample
from edge_runtime.opa.runner import ElasticRunner
from shared_schema.tflite_file import TFLiteFormatError

log = logging.getLogger(__name__)


class SelectorRefit:
    def __init__(self, config: OpaConfig) -> None:
        self.config = config
        self._frames: deque[Measurements] = deque(maxlen=config.frames)
        self._phases = 0

    @property
    def frames(self) -> int:
        return len(self._frames)

    def observe(self, model: bytes, samples: Sequence[Sample], classes: tuple[int, ...]) -> None:
        """Measure the newest of `samples` (not trained on yet) on `model`, the device's."""
        picked = samples[-self.config.per_phase :] if samples else []
        if not picked:
            return
        runner = ElasticRunner(model, threads=1)
        for sample in picked:
            self._frames.append(measure(runner, [sample.rgb], [sample.labels], classes))

    def refitted(self, model: bytes) -> bytes | None:
        """`model` with its selection refitted, when a refit is due (every `refit_phases`
        calls, with two frames at least); else None, as where the file has no room for the
        selection in place (a file built before selections were given room: rebuild it with
        `cloud-trainer opa build`), which is logged."""
        self._phases += 1
        if self._phases % self.config.refit_phases or len(self._frames) < 2:
            return None
        selector = fit_selector(Measurements.merged(self._frames))
        try:
            return selector_in_place(model, selector)
        except TFLiteFormatError as exc:
            log.warning("OPA selection not refitted: %s (rebuild the elastic student with"
                        " `cloud-trainer opa build`)", exc)  # fmt: skip
            return None
