"""An elastic student on LiteRT, and OPA's choice of its sub-network for each frame.

`ElasticRunner` runs the file's signatures (a pioneer, its head, a tail); `unloaded_latency`
calibrates eq. 2's costs; `OpaSelection` is the per-frame loop of seed 004 Fig. 4: the pioneer
at the resolution the last frame's plan chose, the latency predictor (eq. 2, planned by
`LoadTracker`) over every candidate, and where more than one fits the estimator on the head's
confidences (eq. 1) and the predictor, the choice (Algorithm 1), then the chosen tail
continuing from the pioneer's features (subnet inheritance), or a pioneer at another
resolution first when the choice moved there.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.backends.litert import litert
from edge_runtime.frames import Frame
from edge_runtime.opa.estimator import estimate_accuracy, sample_step
from edge_runtime.opa.latency import LoadTracker, Pioneer
from edge_runtime.opa.search import (
    Candidate,
    Choice,
    Plan,
    choose,
    predicted_accuracy,
    remaining_cost,
    resolution_to_test,
)
from edge_runtime.opa.selector import Selector
from edge_runtime.opa.subnets import FEATURES, IMAGE, LABELS, SCORES, ElasticModel, Subnet

# F of eq. 2 for a sub-network, and for the pioneer at a resolution, in the same unit.
Cost = Callable[[Subnet], float]
PioneerCost = Callable[[int], float]


def at_resolution(rgb: np.ndarray, resolution: int) -> np.ndarray:
    """`rgb` scaled to resolution x resolution (swscale, as every frame of the runtime is)."""
    if rgb.shape[:2] == (resolution, resolution):
        return rgb
    return Frame.from_rgb(0, 0.0, rgb).rgb(resolution, resolution)


class ElasticRunner:
    """The signatures of one elastic student, each allocated on first use."""

    def __init__(self, data: bytes, threads: int = 2) -> None:
        self.model = ElasticModel.of(data)
        self._interpreter = litert().Interpreter(model_content=data, num_threads=threads)
        self._runners: dict[str, Any] = {}
        self.size = self.model.file.input_size[0]  # the student's: every label map's
        self._nearest: dict[int, np.ndarray] = {}
        scores = self.model.file.tensor(self.model.scores_tensor)
        self._scores_grid = (float(scores.scale[0]), int(scores.zero_point[0]))

    def _runner(self, key: str) -> Any:
        if key not in self._runners:
            self._runners[key] = self._interpreter.get_signature_runner(key)
        return self._runners[key]

    def features(self, resolution: int, rgb: np.ndarray) -> np.ndarray:
        """The pioneer's features at `resolution` for an RGB frame of any size."""
        image = at_resolution(rgb, resolution)[None]
        return self._runner(self.model.pioneers[resolution].key)(**{IMAGE: image})[FEATURES]

    def scores(self, resolution: int, features: np.ndarray, sampled: bool = False) -> np.ndarray:
        """The head's real-valued class scores (h, w, classes) of the pioneer's features; only
        at the pixels the estimator samples (`sample_step`) where `sampled`."""
        raw = self._runner(self.model.heads[resolution].key)(**{FEATURES: features})[SCORES][0]
        if sampled:
            step = sample_step(raw.shape[0])
            raw = raw[::step, ::step]
        scale, zero_point = self._scores_grid
        return (raw.astype(np.float32) - zero_point) * scale

    def labels(self, subnet: Subnet, features: np.ndarray) -> np.ndarray:
        """The sub-network's label map at the student's output size, continuing from its
        pioneer's features (a smaller map scaled up by nearest neighbour)."""
        labels = self._runner(subnet.tail.key)(**{FEATURES: features})[LABELS][0]
        if labels.shape[0] == self.size:
            return labels
        rows = self._nearest.setdefault(
            labels.shape[0], np.linspace(0, labels.shape[0] - 1, self.size).round().astype(np.intp)
        )
        return labels[rows][:, rows]

    def run(self, subnet: Subnet, rgb: np.ndarray) -> np.ndarray:
        """One sub-network end to end."""
        return self.labels(subnet, self.features(subnet.resolution, rgb))


def unloaded_latency(
    runner: ElasticRunner, frames: Sequence[np.ndarray]
) -> tuple[dict[str, float], dict[int, float]]:
    """Eq. 2's costs: each pioneer's median latency over `frames`, and each sub-network's, its
    pioneer's plus its tail's own median (the tail timed from the features it inherits, so
    that what is left after a pioneer is a measured tail, not a difference of two noisy
    figures); all of them on each frame in turn (the machine's drift hits them alike), after a
    warm-up run. At one resolution a tail that skips more blocks runs a subset of the other's
    ops, so a measured inversion is noise: each is raised to the most any cheaper one took."""
    pioneers: dict[int, list[float]] = {r: [] for r in runner.model.pioneers}
    tails: dict[str, list[float]] = {s.name: [] for s in runner.model.subnets}
    for subnet in runner.model.subnets:
        runner.run(subnet, frames[0])  # allocate and warm up
    for frame in frames:
        for resolution, times in pioneers.items():
            started = time.perf_counter()
            features = runner.features(resolution, frame)
            times.append(time.perf_counter() - started)
            for subnet in runner.model.subnets:
                if subnet.resolution == resolution:
                    started = time.perf_counter()
                    runner.labels(subnet, features)
                    tails[subnet.name].append(time.perf_counter() - started)
    pioneer = {r: statistics.median(t) for r, t in pioneers.items()}
    tail = {n: statistics.median(t) for n, t in tails.items()}
    slowest: dict[int, float] = {}
    for subnet in sorted(runner.model.subnets, key=lambda s: s.macs):
        r = subnet.resolution
        slowest[r] = tail[subnet.name] = max(slowest.get(r, 0.0), tail[subnet.name])
    return {s.name: pioneer[s.resolution] + tail[s.name] for s in runner.model.subnets}, pioneer


@dataclass(frozen=True)
class FrameChoice:
    """What OPA did for one frame (telemetry)."""

    subnet: str
    predicted_s: float
    actual_s: float
    pioneer_s: float  # the pioneer that tested the water
    selection_s: float  # head, estimator, predictors and search
    inherited: bool  # the tail continued from that pioneer (else it ran its own)
    estimate: float | None  # Â_pioneer; None without a selector
    fits: bool  # predicted to fit the budget
    budget_s: float  # the budget in force

    @property
    def over_budget(self) -> bool:
        return self.actual_s > self.budget_s

    @property
    def overhead_s(self) -> float:
        """What OPA added to the frame: the selection, and the pioneer where it was not
        inherited (subnet inheritance makes it part of the chosen sub-network otherwise)."""
        return self.selection_s + (0.0 if self.inherited else self.pioneer_s)


class OpaSelection:
    """Per frame: the sub-network OPA picks for `budget_s`, and its labels."""

    def __init__(
        self,
        runner: ElasticRunner,
        selector: Selector | None,
        budget_s: float,
        costs: tuple[Cost, PioneerCost] | None = None,
        load: LoadTracker | None = None,
    ) -> None:
        """`costs`: F for sub-networks and pioneers (their unloaded latencies, say); by default
        their multiply-accumulates, as seed 004 counts FLOPs. `load`: how the rest of a frame
        is planned (`LoadTracker`'s defaults)."""
        self.runner = runner
        self.selector = selector
        self.budget_s = budget_s
        self.subnets = runner.model.subnets
        self.load = load or LoadTracker()
        cost, pioneer_cost = costs or (
            lambda s: float(s.macs),
            lambda r: float(runner.model.pioneer_macs[r]),
        )
        self._pioneer_cost = {r: pioneer_cost(r) for r in runner.model.pioneers}
        self._candidates = [Candidate(s.name, s.resolution, cost(s)) for s in self.subnets]
        self.resolution = runner.model.largest.resolution  # where the pioneer tests the water

    def infer(self, rgb: np.ndarray) -> tuple[np.ndarray, FrameChoice]:
        started = time.perf_counter()
        features = self.runner.features(self.resolution, rgb)
        pioneer = Pioneer(
            self.resolution, time.perf_counter() - started, self._pioneer_cost[self.resolution]
        )
        rate = self.load.rate(pioneer.rate)
        allowance = self.selector.allowance_s if self.selector else 0.0
        plan = Plan(self.budget_s, allowance, rate, self.load.margin())
        choice, estimate, accuracy = self._choose(features, pioneer, plan, started)
        selected = time.perf_counter()
        subnet = self.subnets[choice.index]
        inherited = subnet.resolution == pioneer.resolution
        if not inherited:
            features = self.runner.features(subnet.resolution, rgb)
        labels = self.runner.labels(subnet, features)
        done = time.perf_counter()
        rest = remaining_cost(self._candidates[choice.index], pioneer)
        if rest > 0 and done > selected:
            self.load.observe(rate, (done - selected) / rest)
        overhead = selected - started - pioneer.seconds
        self.resolution = resolution_to_test(self._candidates, plan, accuracy, overhead)
        return labels, FrameChoice(
            subnet.name,
            choice.predicted_s,
            done - started,
            pioneer.seconds,
            overhead,
            inherited,
            estimate,
            choice.fits,
            self.budget_s,
        )

    def _choose(
        self, features: np.ndarray, pioneer: Pioneer, plan: Plan, started: float
    ) -> tuple[Choice, float | None, np.ndarray | None]:
        """The choice, Â_pioneer and the predicted accuracies (None where not needed)."""
        options = choose(self._candidates, pioneer, plan, None, time.perf_counter() - started)
        if self.selector is None or options.options <= 1:
            # Only a choice among several needs the accuracies: under a load that leaves one
            # candidate or none, the head and the estimator would only make the frame later.
            return options, None, None
        estimate, accuracy = self._predict(features)
        spent = time.perf_counter() - started
        return choose(self._candidates, pioneer, plan, accuracy, spent), estimate, accuracy

    def _predict(self, features: np.ndarray) -> tuple[float, np.ndarray]:
        """Â_pioneer (eq. 1) and every candidate's predicted accuracy."""
        assert self.selector is not None
        scores = self.runner.scores(self.resolution, features, sampled=True)
        estimate = estimate_accuracy(scores, *self.selector.estimator())
        names = [c.name for c in self._candidates]
        slopes, intercepts = self.selector.predictor(self.resolution, names)
        return estimate, predicted_accuracy(estimate, slopes, intercepts)
