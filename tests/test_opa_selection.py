"""OPA's selection against its equations (seed 004): the estimator's preprocessing and naive
Bayes (eq. 1), the latency predictor (eq. 2), Algorithm 1's choice, and the parameters' checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cloud_trainer.opa.fit import fit_line, fit_naive_bayes
from edge_runtime.opa.estimator import estimate_accuracy, naive_bayes_correct, sorted_confidences
from edge_runtime.opa.latency import LoadTracker, Pioneer, latency
from edge_runtime.opa.search import (
    Candidate,
    Plan,
    choose,
    predicted_accuracy,
    resolution_to_test,
)
from edge_runtime.opa.selector import Selector


def test_confidences_are_softmax_min_max_scaled_and_sorted():
    scores = np.zeros((1, 1, 3))
    scores[0, 0] = [0.0, np.log(3.0), np.log(2.0)]  # softmax 1/6, 1/2, 1/3
    (row,) = sorted_confidences(scores)
    # min-max over (1/6, 1/2, 1/3): 0, 1, 0.5; then descending
    assert np.allclose(row, [1.0, 0.5, 0.0])


def test_equal_scores_scale_to_zeros_not_nan():
    (row,) = sorted_confidences(np.ones((1, 1, 4)))
    assert np.array_equal(row, np.zeros(4))


def test_naive_bayes_follows_the_multinomial_posterior():
    log_prior = np.log([0.25, 0.75])
    log_likelihood = np.log([[0.5, 0.5], [0.9, 0.1]])
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # class 1 wins where log .75 + x·log(.9, .1) > log .25 + x·log(.5, .5)
    expected = [
        np.log(0.75) + np.log(0.9) > np.log(0.25) + np.log(0.5),
        np.log(0.75) + np.log(0.1) > np.log(0.25) + np.log(0.5),
        np.log(0.75) + np.log(0.09) > np.log(0.25) + np.log(0.25),
    ]
    assert naive_bayes_correct(x, log_prior, log_likelihood).tolist() == [
        float(e) for e in expected
    ]


def test_the_fit_is_the_smoothed_count_ratio_and_separates_confident_pixels():
    rng = np.random.default_rng(0)
    confident = np.column_stack([np.ones(200), rng.uniform(0, 0.2, 200), np.zeros(200)])
    unsure = np.column_stack([np.ones(200), rng.uniform(0.7, 1.0, 200), np.zeros(200)])
    features = np.vstack([confident, unsure])
    correct = np.r_[np.ones(200, int), np.zeros(200, int)]
    log_prior, log_likelihood = fit_naive_bayes(features, correct, alpha=1.0)
    assert np.allclose(np.exp(log_prior), [201 / 402, 201 / 402])
    totals = features[correct == 1].sum(0) + 1.0
    assert np.allclose(np.exp(log_likelihood[1]), totals / totals.sum())
    predicted = naive_bayes_correct(features, log_prior, log_likelihood)
    assert (predicted == correct).mean() > 0.95
    scores = np.log(np.array([[[50.0, 1.0, 1.0]]]) + 1e-9)  # one dominating class
    assert estimate_accuracy(scores, log_prior, log_likelihood) == 1.0


def test_the_latency_predictor_is_equation_2():
    pioneer = Pioneer(513, 0.010, 100.0)
    # τ_subnet = τ_pioneer / FLOP_pioneer · F(subnet): the pioneer, then its tail at its rate
    assert latency(pioneer.seconds, 450.0 - 100.0, pioneer.rate) == pytest.approx(0.045)
    (only,) = [Candidate("s", 513, 450.0)]
    assert choose([only], pioneer, Plan(1.0)).predicted_s == pytest.approx(0.045)


CANDIDATES = [
    Candidate("big", 513, 1000.0),
    Candidate("mid", 513, 600.0),
    Candidate("low", 257, 250.0),
]


def test_the_most_accurate_candidate_that_fits_is_chosen():
    pioneer = Pioneer(513, 0.010, 100.0)  # 0.1 ms per unit of cost now
    accuracy = np.array([0.9, 0.8, 0.85])
    assert choose(CANDIDATES, pioneer, Plan(0.2), accuracy).index == 0
    choice = choose(CANDIDATES, pioneer, Plan(0.07), accuracy)  # big (0.1 s) does not fit
    # low is at another resolution: it pays its own pioneer after this one
    assert choice.index == 2 and choice.predicted_s == pytest.approx(0.010 + 0.025)
    assert (
        choose(CANDIDATES, pioneer, Plan(0.07, 0.02), accuracy).index == 2
    )  # the allowance counts


def test_a_slowdown_the_pioneer_measures_moves_the_choice_down():
    accuracy = np.array([0.9, 0.8, 0.7])
    unloaded, loaded = Pioneer(513, 0.010, 100.0), Pioneer(513, 0.025, 100.0)  # 2.5x slower now
    assert choose(CANDIDATES, unloaded, Plan(0.11), accuracy).index == 0
    slowed = choose(CANDIDATES, loaded, Plan(0.11), accuracy)
    assert slowed.index == 2 and slowed.predicted_s == pytest.approx(0.025 + 0.0625)


def test_the_next_pioneer_tests_the_water_where_the_plan_would_go_with_nothing_spent():
    accuracy = np.array([0.9, 0.8, 0.7])
    low = Pioneer(257, 0.010, 100.0)  # the last frame ran at 257
    # from 257's pioneer, 513's candidates pay their own pioneer too: only 'low' fits 0.065 s
    assert choose(CANDIDATES, low, Plan(0.065), accuracy).index == 2
    # with nothing spent, 'mid' (0.06 s at this rate) fits: the next pioneer runs at 513
    assert resolution_to_test(CANDIDATES, Plan(0.065, rate=low.rate), accuracy, 0.001) == 513
    # under a load that fits only 'low', it stays at 257
    assert resolution_to_test(CANDIDATES, Plan(0.065, rate=2 * low.rate), accuracy, 0.0) == 257


def test_the_tracker_plans_with_equation_2_until_a_tail_is_seen_then_blends_its_average():
    tracker = LoadTracker(smoothing=0.5, pioneer_weight=0.25)
    assert tracker.rate(0.002) == 0.002  # nothing seen yet: the pioneer's rate now
    tracker.observe(0.002, 0.004)
    tracker.observe(0.004, 0.001)  # log average: 0.5 log 0.004 + 0.5 log 0.001
    average = np.exp(0.5 * np.log(0.004) + 0.5 * np.log(0.001))
    expected = np.exp(0.75 * np.log(average) + 0.25 * np.log(0.003))
    assert tracker.rate(0.003) == pytest.approx(expected)


def test_the_margin_is_the_quantile_of_recent_misses_and_cautious_before():
    tracker = LoadTracker(quantile=0.9, window=10, warmup=5, prior_margin=1.5)
    assert tracker.margin() == 1.5
    tracker.observe(1.0, 2.0)  # ran twice as slow as planned
    assert tracker.margin() == 2.0  # the worst miss while warming up
    for _ in range(9):
        tracker.observe(1.0, 0.5)
    # the window now holds 2.0 and nine 0.5: its 0.9 quantile, but never below 1
    assert tracker.margin() == pytest.approx(max(1.0, np.quantile([2.0] + [0.5] * 9, 0.9)))
    tracker.observe(1.0, 0.5)  # the 2.0 leaves the window
    assert tracker.margin() == 1.0


def test_under_an_injected_noisy_slowdown_about_one_frame_in_a_hundred_runs_over():
    """Frames whose rest runs at a random 1.5-3x slowdown (white, as measured under busy
    processes): eq. 2 on the pioneer alone misses the budget often, the tracker about as often
    as its quantile says, while still using most of the budget."""
    rng = np.random.default_rng(1)
    candidates = [Candidate(f"c{cost}", 513, float(cost)) for cost in range(1000, 100, -50)]
    budget, unloaded_rate = 0.25, 1e-4  # 0.1 s for the largest unloaded

    def run(tracker: LoadTracker | None) -> tuple[float, float]:
        over, used = 0, []
        for _ in range(3000):
            slow = rng.uniform(1.5, 3.0, size=2)  # the pioneer's and the tail's, independent
            pioneer = Pioneer(513, 100 * unloaded_rate * slow[0], 100.0)
            rate = tracker.rate(pioneer.rate) if tracker else None
            margin = tracker.margin() if tracker else 1.0
            choice = choose(candidates, pioneer, Plan(budget, 0.0, rate, margin))
            rest = candidates[choice.index].cost - pioneer.cost
            actual = pioneer.seconds + rest * unloaded_rate * slow[1]
            if tracker:
                tracker.observe(rate, unloaded_rate * slow[1])
            over += actual > budget
            used.append(actual / budget)
        return over / 3000, float(np.mean(used))

    plain_over, _ = run(None)
    tracked_over, tracked_use = run(LoadTracker())
    assert plain_over > 0.2
    assert tracked_over <= 0.02 and tracked_use > 0.6


def test_without_accuracy_the_costliest_fitting_runs_and_nothing_fitting_runs_the_cheapest():
    pioneer = Pioneer(513, 0.010, 100.0)
    assert choose(CANDIDATES, pioneer, Plan(0.065)).index == 1
    none_fit = choose(CANDIDATES, pioneer, Plan(0.001))
    assert none_fit.index == 2 and not none_fit.fits


def test_the_pioneer_predictor_is_a_clipped_line():
    out = predicted_accuracy(0.5, np.array([1.0, 2.0, -3.0]), np.array([0.1, 0.5, 0.2]))
    assert out.tolist() == [0.6, 1.0, 0.0]
    assert fit_line(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0, 5.0])) == pytest.approx((2, 1))
    assert fit_line(np.ones(3), np.array([0.2, 0.4, 0.6])) == pytest.approx((0.0, 0.4))


def _selector(**change) -> dict:
    fields = {
        "log_prior": [-0.7, -0.7],
        "log_likelihood": [[-1.0] * 21, [-1.0] * 21],
        "predictors": {"513": {"r513_d0": [1.0, 0.0]}},
    }
    return {**fields, **change}


@pytest.mark.parametrize(
    "bad",
    [
        {"log_prior": [0.5, -0.1]},  # a log probability above 0
        {"log_likelihood": [[float("nan")] * 21, [-1.0] * 21]},
        {"predictors": {"513": {"r513_d0": [float("inf"), 0.0]}}},
        {"allowance_s": -1.0},
        {"surprise": 1},
    ],
)
def test_malformed_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        Selector.model_validate_json(json.dumps(_selector(**bad)))
