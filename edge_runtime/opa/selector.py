"""The parameters of OPA's selection, shipped inside the elastic student's file (TFLite metadata
``SELECTOR_METADATA``): covered by the model's hash, so by the signed update that brings it.
A trainer refit changes only this entry, a small ``zpatch``. The device validates them against
its model before use; a set that does not fit is refused (`SelectorError`), and the device picks
by latency alone until a good one comes."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_runtime.opa.subnets import ElasticModel

SELECTOR_METADATA = "amstream.opa.selector"
MAX_SELECTOR_BYTES = 1 << 20  # a few hundred numbers in practice

_LogProbability = Annotated[float, Field(le=0.0)]


class SelectorError(ValueError):
    """Selection parameters that are malformed or do not fit the model (the message says which)."""


class Selector(BaseModel):
    """The estimator's naive Bayes (eq. 1) and the pioneer predictor, per pioneer resolution."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    version: Literal[1] = 1
    log_prior: tuple[_LogProbability, _LogProbability]  # wrong, correct
    log_likelihood: tuple[tuple[_LogProbability, ...], tuple[_LogProbability, ...]]
    # pioneer resolution -> sub-network name -> (slope, intercept) of the predictor
    predictors: dict[int, dict[str, tuple[float, float]]]
    allowance_s: float = Field(0.0, ge=0.0, le=1.0)  # Δτ of Algorithm 1

    def check_fits(self, model: ElasticModel) -> None:
        """Raise SelectorError unless every shape matches `model`."""
        classes = model.file.num_classes
        if any(len(row) != classes for row in self.log_likelihood):
            raise SelectorError(f"log_likelihood rows must have {classes} values (the classes)")
        names = {s.name for s in model.subnets}
        if set(self.predictors) != set(model.pioneers):
            raise SelectorError(
                f"predictors are for pioneers {sorted(self.predictors)}, the model has"
                f" {sorted(model.pioneers)}"
            )
        for resolution, rows in self.predictors.items():
            if set(rows) != names:
                raise SelectorError(f"the r{resolution} predictor must cover {sorted(names)}")

    def estimator(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.log_prior), np.array(self.log_likelihood)

    def predictor(self, resolution: int, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(slopes, intercepts) for the candidates `names`, after the pioneer at `resolution`."""
        rows = np.array([self.predictors[resolution][n] for n in names], np.float64)
        return rows[:, 0], rows[:, 1]


def read_selector(model: ElasticModel) -> Selector | None:
    """The model's selection parameters; None where it ships none, SelectorError where they are
    unusable."""
    raw = model.file.metadata(SELECTOR_METADATA)
    if raw is None:
        return None
    if len(raw) > MAX_SELECTOR_BYTES:
        raise SelectorError(f"{SELECTOR_METADATA} is {len(raw)} bytes, over {MAX_SELECTOR_BYTES}")
    try:
        selector = Selector.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SelectorError(f"{SELECTOR_METADATA}: {first}") from None
    selector.check_fits(model)
    return selector
