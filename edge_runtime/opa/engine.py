"""OPA as the runtime's inference engine (``[opa] enabled``): each frame runs the sub-network
OPA picks for the profile's budget, and the choices go into telemetry.

The engine opens an elastic student (``cloud-trainer opa build``); a plain model is a
`ModelError`, so an update that would take the sub-networks away is refused like any model the
device cannot load. Its selection parameters are read from the file; a set that does not fit is
logged and the engine picks by latency alone (the largest sub-network the measured load
allows). Eq. 2's costs are the sub-networks' and pioneers' latencies, timed once when the
engine opens (on the builder thread, off the frame loop): MACs mispredict them (measured in
``edge-runtime bench --opa-budget-ms``)."""

from __future__ import annotations

import logging
import statistics
from collections import deque

import numpy as np

from edge_runtime.backends.base import BackendConfig, Engine, ModelError
from edge_runtime.backends.tensors import TensorSpec, normalization_table
from edge_runtime.opa.latency import LoadTracker
from edge_runtime.opa.runner import ElasticRunner, FrameChoice, OpaSelection, unloaded_latency
from edge_runtime.opa.selector import SelectorError, read_selector
from shared_schema.messages import OpaTelemetry
from shared_schema.tflite_file import TFLiteFormatError

log = logging.getLogger(__name__)
_CALIBRATION_RUNS = 3
_WINDOW = 1024  # frames telemetry summarises


Costs = tuple[dict[str, float], dict[int, float]]  # by sub-network, by pioneer resolution


class DeviceLoad:
    """What carries from one model the device loads to the next while their sub-networks are
    the same (an update changes weights, not ops): eq. 2's costs, calibrated once, and the load
    the frames measured against them. A model of other sub-networks is calibrated again and
    starts a new tracker: a rate is only worth the costs it was learnt against."""

    def __init__(self) -> None:
        self._layout: tuple | None = None
        self._costs: Costs = ({}, {})
        self.tracker = LoadTracker()

    def costs(self, runner: ElasticRunner) -> Costs:
        """The costs of `runner`'s sub-networks and pioneers, timed on a mid-grey frame (on the
        builder thread, off the frame loop) where they are new."""
        model = runner.model
        layout = (tuple((s.name, s.macs) for s in model.subnets), tuple(model.pioneer_macs.items()))
        if layout != self._layout:
            grey = np.full((*model.file.input_size, 3), 128, np.uint8)
            self._costs = unloaded_latency(runner, [grey] * _CALIBRATION_RUNS)
            self._layout, self.tracker = layout, LoadTracker()
        return self._costs


class OpaEngine(Engine):
    name = "opa"

    def __init__(
        self, data: bytes, config: BackendConfig, budget_ms: float, load: DeviceLoad | None = None
    ) -> None:
        """`load`: what the models before this one measured (the runtime passes one to every
        model it loads, so an update neither times the sub-networks again nor starts the
        load's tracking over)."""
        try:
            self.runner = ElasticRunner(data, config.threads)
        except TFLiteFormatError as exc:
            raise ModelError(
                f"[opa] is on but the model is not an elastic student ({exc}): build one with"
                " `cloud-trainer opa build`, or set [opa] enabled = false"
            ) from exc
        self._check_input(config)
        try:
            selector = read_selector(self.runner.model)
        except SelectorError as exc:
            log.warning("opa: selection parameters refused (%s): choosing by latency alone", exc)
            selector, self.selector_state = None, "refused"
        else:
            self.selector_state = "none" if selector is None else "shipped"
        load = load or DeviceLoad()
        subnets, pioneers = load.costs(self.runner)
        costs = (lambda s: subnets[s.name], pioneers.__getitem__)
        self.selection = OpaSelection(self.runner, selector, budget_ms / 1000, costs, load.tracker)
        self._choices: deque[FrameChoice] = deque(maxlen=_WINDOW)

    def _check_input(self, config: BackendConfig) -> None:
        image = self.runner.model.file.tensor(self.runner.model.file.inputs[0])
        spec = TensorSpec(image.shape, np.dtype(image.dtype), float(image.scale[0]),
                          int(image.zero_point[0]))  # fmt: skip
        table = normalization_table(spec, config.input_mean, config.input_std)
        if not np.array_equal(table.astype(np.int64), np.arange(256)):
            raise ModelError("[opa] needs a model that takes the raw uint8 pixels (Coral's)")

    @property
    def budget_ms(self) -> float:
        return self.selection.budget_s * 1000

    @property
    def input_size(self) -> tuple[int, int]:
        return self.runner.model.file.input_size

    @property
    def num_classes(self) -> int | None:
        return self.runner.model.file.num_classes

    def infer(self, rgb: np.ndarray) -> np.ndarray:
        labels, choice = self.selection.infer(rgb)
        self._choices.append(choice)
        return labels

    def telemetry(self) -> OpaTelemetry:
        """The window's choices, latencies and overhead."""
        choices = list(self._choices)

        def p50_ms(values: list[float]) -> float:
            return 1000 * statistics.median(values) if values else 0.0

        names = [c.subnet for c in choices]
        return OpaTelemetry(
            budget_ms=self.budget_ms,
            selector=self.selector_state,
            frames=len(choices),
            over_budget=sum(c.over_budget for c in choices),
            subnets={n: names.count(n) for n in sorted(set(names))},
            predicted_p50_ms=p50_ms([c.predicted_s for c in choices]),
            actual_p50_ms=p50_ms([c.actual_s for c in choices]),
            selection_p50_ms=p50_ms([c.selection_s for c in choices]),
        )

    def close(self) -> None:
        self.runner = None  # type: ignore[assignment]
