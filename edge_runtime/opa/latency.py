"""OPA's latency predictor (seed 004 eq. 2), planned with the device's own history.

Eq. 2 scales the pioneer's latency now by the costs: tau_subnet = tau_pioneer / F(pioneer) *
F(subnet), one rate (seconds per unit of F) for the whole frame. F is a count of
multiply-accumulates (the paper's FLOPs) or, once the device has timed each sub-network
unloaded, those times: convolutions of different shapes do not cost the same per MAC.

Measured on a 2-core machine under busy background processes (``edge-runtime bench
--opa-budget-ms``, README "OPA"), one pioneer's rate barely predicts the tail's that follows it
(correlation 0.2-0.3 with one or two busy processes): the scheduler's slices are as long as a
pioneer. `LoadTracker` therefore plans with a moving average of the tails' own rates, the
pioneer's rate now blended in, and turns Algorithm 1's allowance into a factor learnt from its
own misses: a quantile of (actual rate / planned rate) over recent frames, so that about one
frame in a hundred runs over the budget whatever the load.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pioneer:
    """The pioneer that just tested the water."""

    resolution: int
    seconds: float  # what it took now
    cost: float  # its F

    @property
    def rate(self) -> float:
        """tau_pioneer / F(pioneer) of eq. 2: seconds per unit of F now."""
        return self.seconds / self.cost


def latency(spent_seconds: float, rest_cost: float, rate: float) -> float:
    """A frame's latency when `rest_cost` of F is left after `spent_seconds`, run at `rate`.
    Eq. 2 where the rest is a sub-network's tail, the pioneer alone spent, and the rate the
    pioneer's: tau_pioneer + (F(subnet) - F(pioneer)) * tau_pioneer / F(pioneer)."""
    return spent_seconds + rest_cost * rate


class LoadTracker:
    """The rate to plan the rest of a frame with, and the margin on it."""

    def __init__(
        self,
        smoothing: float = 0.2,
        pioneer_weight: float = 0.15,
        quantile: float = 0.99,
        window: int = 256,
        warmup: int = 32,
        prior_margin: float = 1.5,
    ) -> None:
        self.smoothing = smoothing  # weight of the newest tail in the moving average
        self.pioneer_weight = pioneer_weight  # weight of this frame's pioneer in the plan
        self.quantile = quantile
        self.warmup = warmup
        self.prior_margin = prior_margin  # until `warmup` misses are known
        self._log_rate: float | None = None  # moving average of the tails' log rates
        self._errors: deque[float] = deque(maxlen=window)  # actual / planned rate

    def rate(self, pioneer_rate: float) -> float:
        """Seconds per unit of F for the rest of this frame: eq. 2's tau_pioneer / F(pioneer)
        until a tail has been seen, then the geometric blend of the tails' average and it."""
        if self._log_rate is None:
            return pioneer_rate
        w = self.pioneer_weight
        return math.exp((1 - w) * self._log_rate + w * math.log(pioneer_rate))

    def margin(self) -> float:
        """The factor on the planned rate (Algorithm 1's allowance Δτ, relative): the
        `quantile` of recent misses, and no less than the worst one or `prior_margin` while
        fewer than `warmup` are known; never below 1."""
        if len(self._errors) < self.warmup:
            return max(self.prior_margin, *self._errors, 1.0)
        return max(1.0, float(np.quantile(np.fromiter(self._errors, float), self.quantile)))

    def observe(self, planned_rate: float, actual_rate: float) -> None:
        """A frame's rest ran at `actual_rate` where `planned_rate` was planned."""
        self._errors.append(actual_rate / planned_rate)
        a, log_actual = self.smoothing, math.log(actual_rate)
        previous = log_actual if self._log_rate is None else self._log_rate
        self._log_rate = (1 - a) * previous + a * log_actual
