"""Adaptive Sampling Rate (seed 002 §3.2, eq. 1).

Every δt the trainer moves the device's sampling rate towards keeping the scene-change score
φ near a target: r ← [r + η (φ̄ − φ_target)] clipped to [r_min, r_max], where φ_k = 1 − mIoU
between the teacher's labels of consecutive samples (over the stream's classes) and φ̄ is their
mean since the last update. Fast-changing scenes raise φ and with it the rate.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared_schema.metrics import miou


class AsrConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    initial_fps: float = Field(1.0, gt=0)
    min_fps: float = Field(0.1, gt=0)  # r_min of the paper
    max_fps: float = Field(1.0, gt=0)  # r_max
    phi_target: float = Field(0.4, ge=0, le=1)  # the authors' code aims at cross-mIoU 0.6
    eta: float = Field(2.0, gt=0)  # fps per unit of φ
    interval_s: float = Field(10.0, gt=0)  # δt

    @model_validator(mode="after")
    def _ordered(self) -> AsrConfig:
        if not self.min_fps <= self.initial_fps <= self.max_fps:
            raise ValueError("need min_fps <= initial_fps <= max_fps")
        return self


def phi_score(previous: np.ndarray, current: np.ndarray, classes: Iterable[int]) -> float:
    """φ_k: the teacher's label map of a sample scored against that of the sample before it."""
    return 1.0 - miou(current, previous, classes)


class AdaptiveSamplingRate:
    def __init__(self, config: AsrConfig | None = None) -> None:
        self.config = config or AsrConfig()
        self.rate_fps = self.config.initial_fps
        self._phis: list[float] = []
        self.bounds: tuple[float, float] | None = None  # an operator's, over the config's

    def observe(self, phi: float) -> None:
        self._phis.append(phi)

    def cut(self) -> None:
        """A scene cut: the rate goes to r_max (the device went to its own maximum, and the
        control that follows says this one), and the φ measured so far, the old scene's, is
        dropped. Off, the rate stays."""
        if self.config.enabled:
            self.rate_fps = self.config.max_fps
        self._phis.clear()

    def update(self) -> float:
        """Eq. 1, once per δt; with no new φ (no samples arrived) the rate stays."""
        cfg = self.config
        if cfg.enabled and self._phis:
            phi_bar = float(np.mean(self._phis))
            stepped = self.rate_fps + cfg.eta * (phi_bar - cfg.phi_target)
            self.rate_fps = float(np.clip(stepped, cfg.min_fps, cfg.max_fps))
        self._phis.clear()
        return self.rate_fps

    def bound(self, min_fps: float, max_fps: float) -> None:
        """An operator's [r_min, r_max] in place of the config's; the rate moves into them
        (a ValidationError, as for the config, unless 0 < min_fps <= max_fps)."""
        initial = float(np.clip(self.config.initial_fps, min_fps, max_fps))
        bounds = {"min_fps": min_fps, "max_fps": max_fps, "initial_fps": initial}
        self.config = AsrConfig.model_validate({**self.config.model_dump(), **bounds})
        self.rate_fps = float(np.clip(self.rate_fps, min_fps, max_fps))
        self.bounds = (min_fps, max_fps)

    def state_dict(self) -> dict[str, object]:
        return {"rate_fps": self.rate_fps, "phis": list(self._phis), "bounds": self.bounds}

    def load_state_dict(self, state: dict[str, object]) -> None:
        bounds = state.get("bounds")  # not in checkpoints before the dashboard's actions
        if bounds is not None:
            self.bound(*(float(b) for b in bounds))  # type: ignore[attr-defined]
        self.rate_fps = float(state["rate_fps"])
        self._phis = [float(p) for p in state["phis"]]
