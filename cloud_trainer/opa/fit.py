"""Fitting OPA's selection on teacher-labelled frames, the way the device will run it: the
elastic file on LiteRT, each pioneer's head confidences against the teacher's labels (the naive
Bayes of eq. 1), and each candidate's measured mIoU against the estimate (the pioneer
predictor). The result goes into the file's metadata, where the device reads it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edge_runtime.opa.estimator import naive_bayes_correct, sample_step, sorted_confidences
from edge_runtime.opa.runner import ElasticRunner
from edge_runtime.opa.selector import SELECTOR_METADATA, Selector
from shared_schema.metrics import ClassSubset, miou
from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError

_ALPHA = 1.0  # Laplace smoothing of the naive Bayes counts


def fit_naive_bayes(
    features: np.ndarray, correct: np.ndarray, alpha: float = _ALPHA
) -> tuple[np.ndarray, np.ndarray]:
    """(log P(c), log theta_ck) of a multinomial naive Bayes over rows of non-negative
    `features`, classes 0 (wrong) and 1 (correct): theta_ck = (sum of x_k in c + alpha) /
    (sum of all x in c + alpha K)."""
    counts = np.array([np.count_nonzero(correct == c) for c in (0, 1)], np.float64)
    prior = (counts + alpha) / (counts.sum() + 2 * alpha)
    totals = np.stack([features[correct == c].sum(axis=0) for c in (0, 1)]) + alpha
    likelihood = totals / totals.sum(axis=1, keepdims=True)
    return np.log(prior), np.log(likelihood)


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y on x; a flat line where x does not vary."""
    if np.ptp(x) < 1e-9:
        return 0.0, float(np.mean(y))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def _on_grid(labels: np.ndarray, side: int) -> np.ndarray:
    """The label at each pixel of a side x side map covering the same picture, at the pixels
    the estimator samples."""
    rows, cols = (
        np.linspace(0, n - 1, side).round().astype(int)[:: sample_step(side)]
        for n in labels.shape[:2]
    )
    return labels[rows][:, cols].ravel()


@dataclass
class Measurements:
    """Per pioneer resolution: the head's sorted confidences and whether each pixel is right;
    per frame: each sub-network's mIoU against the teacher."""

    features: dict[int, list[np.ndarray]] = field(default_factory=dict)
    correct: dict[int, list[np.ndarray]] = field(default_factory=dict)
    miou: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def merged(cls, parts: Iterable[Measurements]) -> Measurements:
        """All of `parts`' frames in one."""
        out = cls()
        for part in parts:
            for mine, theirs in ((out.features, part.features), (out.correct, part.correct),
                                 (out.miou, part.miou)):  # fmt: skip
                for key, rows in theirs.items():
                    mine.setdefault(key, []).extend(rows)  # type: ignore[arg-type]
        return out


def measure(
    runner: ElasticRunner,
    frames: Sequence[np.ndarray],
    teacher: Sequence[np.ndarray],
    classes: tuple[int, ...] | None = None,
) -> Measurements:
    """Every pioneer's head and every sub-network on each frame, against the teacher's labels;
    mIoU over `classes` (by default those the teacher's labels show)."""
    if classes is None:
        subset = ClassSubset(runner.model.file.num_classes)
        for labels in teacher:
            subset.observe(labels)
        classes = subset.classes
    out = Measurements()
    for rgb, truth in zip(frames, teacher, strict=True):
        features_at = {}
        for resolution in runner.model.pioneers:
            features = features_at[resolution] = runner.features(resolution, rgb)
            scores = runner.scores(resolution, features)
            step = sample_step(scores.shape[0])
            sampled = scores[::step, ::step]
            right = sampled.argmax(-1).ravel() == _on_grid(truth, scores.shape[0])
            out.features.setdefault(resolution, []).append(sorted_confidences(sampled))
            out.correct.setdefault(resolution, []).append(right)
        for subnet in runner.model.subnets:
            labels = runner.labels(subnet, features_at[subnet.resolution])
            out.miou.setdefault(subnet.name, []).append(miou(labels, truth, classes))
    return out


def fit_selector(measured: Measurements, allowance_s: float = 0.0) -> Selector:
    """The estimator over every pioneer's pixels, then per pioneer one line per candidate."""
    features = np.concatenate([f for rows in measured.features.values() for f in rows])
    correct = np.concatenate([c for rows in measured.correct.values() for c in rows])
    log_prior, log_likelihood = fit_naive_bayes(features, correct.astype(int))
    predictors = {}
    for resolution, rows in measured.features.items():
        estimates = np.array(
            [naive_bayes_correct(f, log_prior, log_likelihood).mean() for f in rows]
        )
        predictors[resolution] = {
            name: fit_line(estimates, np.array(values)) for name, values in measured.miou.items()
        }
    return Selector(
        log_prior=tuple(log_prior),
        log_likelihood=tuple(tuple(row) for row in log_likelihood),
        predictors=predictors,
        allowance_s=allowance_s,
    )


def with_selector(data: bytes, selector: Selector) -> bytes:
    """The model file with `selector` as its selection metadata: rewritten in place where the
    entry has room (a refit: the file's layout stays, so value updates still apply to it),
    else in an entry made with twice the room the parameters take, for the refits to come."""
    try:
        return selector_in_place(data, selector)
    except TFLiteFormatError:  # no entry yet, or one without the room: made anew, with room
        pass
    payload = selector.model_dump_json().encode()
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    name = SELECTOR_METADATA.encode()
    entry = next((m for m in model.metadata or [] if m.name == name), None)
    if entry is None:
        model.buffers.append(schema.BufferT())
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    model.buffers[entry.buffer].data = np.frombuffer(payload.ljust(2 * len(payload)), np.uint8)
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def selector_in_place(data: bytes, selector: Selector) -> bytes:
    """The model file with its selection metadata rewritten in place (`with_metadata`), every
    other byte where it was; TFLiteFormatError where the file has no entry with the room."""
    payload = selector.model_dump_json().encode()
    return TFLiteFile(data).with_metadata(SELECTOR_METADATA, payload)
