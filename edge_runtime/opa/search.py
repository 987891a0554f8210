"""OPA's choice of a sub-network for one frame (seed 004 Algorithm 1, and the pioneer predictor of
§IV-A): predict every candidate's accuracy from the pioneer's estimated accuracy, predict its
latency from the pioneer's measured one (eq. 2, at the rate and margin `LoadTracker` plans
with), keep those that fit the budget less its allowance, and take the most accurate. The paper
searches 10^13 sub-networks by perturbing a look-up table's entry; an elastic student here has
a handful, so the search is exhaustive and exact, and costs microseconds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.opa.latency import Pioneer, latency


@dataclass(frozen=True)
class Candidate:
    name: str
    resolution: int
    cost: float  # F(subnet) of eq. 2, the pioneer included


@dataclass(frozen=True)
class Choice:
    index: int  # into the candidates
    predicted_s: float  # the frame's latency at the planned rate, before the margin
    options: int  # how many candidates fit

    @property
    def fits(self) -> bool:
        """False: nothing fits the budget, the cheapest runs."""
        return self.options > 0


def predicted_accuracy(estimate: float, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """The pioneer predictor: each candidate's accuracy from the pioneer's estimated accuracy,
    a_s = slope_s * Â_pioneer + intercept_s (the linear map of seed 004's pilot study, §III),
    clipped to [0, 1]."""
    return np.clip(slopes * estimate + intercepts, 0.0, 1.0)


def remaining_cost(candidate: Candidate, pioneer: Pioneer) -> float:
    """What is left to run of `candidate` after `pioneer`: its tail where it inherits the
    pioneer's features, all of it (its own pioneer too) at another resolution."""
    if candidate.resolution == pioneer.resolution:  # never below 0, whatever the costs' noise
        return max(candidate.cost - pioneer.cost, 0.0)
    return candidate.cost


@dataclass(frozen=True)
class Plan:
    """What a frame must fit: its budget less Algorithm 1's allowance Δτ, the rest of it run at
    `rate` seconds per unit of F (None: eq. 2's, the pioneer's now) times `margin`."""

    budget_s: float
    allowance_s: float = 0.0
    rate: float | None = None
    margin: float = 1.0


def choose(
    candidates: Sequence[Candidate],
    pioneer: Pioneer,
    plan: Plan,
    accuracy: np.ndarray | None = None,
    spent_seconds: float | None = None,
) -> Choice:
    """The candidate to run now, after `spent_seconds` (by default the pioneer's). Without
    `accuracy` (no valid predictor) the costliest candidate that fits is taken; where none
    fits, the cheapest."""
    rate = pioneer.rate if plan.rate is None else plan.rate
    spent = pioneer.seconds if spent_seconds is None else spent_seconds
    rest = [remaining_cost(c, pioneer) for c in candidates]
    limit = plan.budget_s - plan.allowance_s
    fitting = [i for i, r in enumerate(rest) if latency(spent, r, rate * plan.margin) <= limit]
    if not fitting:
        # the cheapest; of equal costs the later, smaller candidate (they come largest first)
        best = min(range(len(candidates)), key=lambda i: (rest[i], -i))
    elif accuracy is None:
        best = max(fitting, key=lambda i: candidates[i].cost)
    else:  # equal predictions: the cheaper one, which leaves the device more slack
        best = max(fitting, key=lambda i: (accuracy[i], -candidates[i].cost))
    return Choice(best, latency(spent, rest[best], rate), len(fitting))


def resolution_to_test(
    candidates: Sequence[Candidate],
    plan: Plan,
    accuracy: np.ndarray | None,
    overhead_seconds: float,
) -> int:
    """Where the next frame's pioneer tests the water: the resolution of the candidate this
    frame's `plan` (its rate set) would take had nothing run yet (each candidate whole, its own
    pioneer included, after the selection's `overhead_seconds`). A pioneer at the resolution
    the last frame ran would keep OPA low for good once it moved down: climbing back pays two
    pioneers."""
    assert plan.rate is not None, "the rate the frame was planned at"
    nowhere = Pioneer(0, overhead_seconds, 1.0)  # no candidate inherits from it
    return candidates[choose(candidates, nowhere, plan, accuracy).index].resolution
