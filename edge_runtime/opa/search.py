"""OPA's choice of a sub-network for one frame (seed 004 Algorithm 1, and the pioneer predictor of
§IV-A): predict every candidate's accuracy from the pioneer's estimated accuracy, predict its
latency from the pioneer's measured one (eq. 2), keep those that fit the budget less its
allowance, and take the most accurate. The paper searches 10^13 sub-networks by perturbing a
look-up table's entry; an elastic student here has a handful, so the search is exhaustive and
exact, and costs microseconds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.opa.latency import predicted_latency


@dataclass(frozen=True)
class Candidate:
    name: str
    resolution: int
    cost: float  # F(subnet) of eq. 2, the pioneer included


@dataclass(frozen=True)
class Choice:
    index: int  # into the candidates
    predicted_s: float
    predicted_accuracy: float | None  # None: chosen by cost alone
    fits: bool  # False: nothing fits the budget, the cheapest runs


def predicted_accuracy(estimate: float, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """The pioneer predictor: each candidate's accuracy from the pioneer's estimated accuracy,
    a_s = slope_s * Â_pioneer + intercept_s (the linear map of seed 004's pilot study, §III),
    clipped to [0, 1]."""
    return np.clip(slopes * estimate + intercepts, 0.0, 1.0)


def choose(
    candidates: Sequence[Candidate],
    pioneer: tuple[int, float, float],
    budget_seconds: float,
    allowance_seconds: float,
    accuracy: np.ndarray | None,
) -> Choice:
    """The candidate to run now. `pioneer` is (resolution, seconds it just took, its cost); a
    candidate at another resolution runs its own pioneer after this one, so it pays both.
    Without `accuracy` (no valid predictor) the costliest candidate that fits is taken."""
    resolution, seconds, pioneer_cost = pioneer
    limit = budget_seconds - allowance_seconds
    times = []
    for c in candidates:
        spent = 0.0 if c.resolution == resolution else seconds
        times.append(spent + predicted_latency(seconds, pioneer_cost, c.cost))
    fitting = [i for i, t in enumerate(times) if t <= limit]
    if not fitting:
        cheapest = min(range(len(candidates)), key=times.__getitem__)
        return Choice(cheapest, times[cheapest], None, False)
    if accuracy is None:
        best = max(fitting, key=lambda i: candidates[i].cost)
        return Choice(best, times[best], None, True)
    # Equal predictions: the cheaper one, which leaves the device more slack.
    best = max(fitting, key=lambda i: (accuracy[i], -candidates[i].cost))
    return Choice(best, times[best], float(accuracy[best]), True)
