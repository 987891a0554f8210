"""OPA's latency predictor (seed 004 eq. 2): a sub-network's latency now is the pioneer's latency
measured now, scaled by their costs, tau_subnet = tau_pioneer / F(pioneer) * F(subnet). F is a
count of multiply-accumulates (the paper's FLOPs) or, once the device has timed each sub-network
unloaded, those times: convolutions of different shapes do not cost the same per MAC."""

from __future__ import annotations


def predicted_latency(pioneer_seconds: float, pioneer_cost: float, subnet_cost: float) -> float:
    """Eq. 2."""
    return pioneer_seconds / pioneer_cost * subnet_cost


def allowed_cost(
    budget_seconds: float, allowance_seconds: float, pioneer_seconds: float, pioneer_cost: float
) -> float:
    """Algorithm 1, line 3: the largest cost that fits the budget less its allowance, under the
    load the pioneer just measured."""
    return (budget_seconds - allowance_seconds) * pioneer_cost / pioneer_seconds
