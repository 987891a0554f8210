"""OPA's accuracy estimator (seed 004 §IV-A): how accurate the pioneer is on this frame, from its
confidences alone. Each sampled pixel's class confidences are min-max scaled and sorted in
descending order (the two-step preprocessing), a multinomial naive Bayes classifier says whether
that pixel is right, and the estimate is the share it calls right (eq. 1, with pixels for
images: a segmenter classifies every pixel)."""

from __future__ import annotations

import numpy as np

# The estimator reads at most this many pixels along a score map's side (22-29 on the maps of
# 257 to 513 inputs, 480-840 pixels): plenty for a share, where all of a 129x129 map cost 2 ms
# a frame on 2 cores.
SAMPLES_PER_SIDE = 32


def sample_step(side: int) -> int:
    """The smallest grid step that samples at most SAMPLES_PER_SIDE pixels along `side`."""
    return max(1, -(-side // SAMPLES_PER_SIDE))


def sorted_confidences(scores: np.ndarray) -> np.ndarray:
    """(pixels, classes): for each pixel of `scores` (..., classes: real-valued scores, the
    sampled pixels), its softmax confidences, min-max scaled to [0, 1] and sorted in
    descending order."""
    sampled = scores.reshape(-1, scores.shape[-1]).astype(np.float32)
    exp = np.exp(sampled - sampled.max(axis=1, keepdims=True))
    confidences = exp / exp.sum(axis=1, keepdims=True)
    low = confidences.min(axis=1, keepdims=True)
    span = confidences.max(axis=1, keepdims=True) - low
    scaled = (confidences - low) / np.where(span > 0, span, 1.0)
    return -np.sort(-scaled, axis=1)


def naive_bayes_correct(
    features: np.ndarray, log_prior: np.ndarray, log_likelihood: np.ndarray
) -> np.ndarray:
    """Bayes(x) of eq. 1 for each row: 1 where the multinomial naive Bayes classifier's posterior
    for "correct" (class 1) beats "wrong" (class 0): log P(c) + sum_k x_k log theta_ck."""
    joint = features @ log_likelihood.T + log_prior  # (pixels, 2)
    return (joint[:, 1] > joint[:, 0]).astype(np.float64)


def estimate_accuracy(
    scores: np.ndarray, log_prior: np.ndarray, log_likelihood: np.ndarray
) -> float:
    """Â_pioneer of eq. 1: the share of the sampled pixels of `scores` the classifier calls
    correct."""
    features = sorted_confidences(scores)
    return float(naive_bayes_correct(features, log_prior, log_likelihood).mean())
