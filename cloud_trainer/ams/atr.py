"""Adaptive Training Rate (seed 002 appendix D, eq. 2).

A low sampling rate means a slowly changing scene. Below ``enter_below`` fps the session enters
slow-down mode, in which T_update grows by Δ every δt; above ``exit_above`` fps it leaves it
and T_update snaps back to τ_min; in between the mode holds (hysteresis). The growth is capped
(the authors' code caps it at 6 τ_min), so a still scene is still retrained now and then.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AtrConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    tau_min_s: float = Field(10.0, gt=0)  # the default T_update
    step_s: float = Field(2.0, gt=0)  # Δ
    tau_max_s: float = Field(60.0, gt=0)
    enter_below_fps: float = Field(0.25, gt=0)  # γ0
    exit_above_fps: float = Field(0.35, gt=0)  # γ1

    @model_validator(mode="after")
    def _ordered(self) -> AtrConfig:
        if self.enter_below_fps > self.exit_above_fps:
            raise ValueError("enter_below_fps must not exceed exit_above_fps")
        if self.tau_max_s < self.tau_min_s:
            raise ValueError("tau_max_s must not be below tau_min_s")
        return self


class AdaptiveTrainingRate:
    def __init__(self, config: AtrConfig | None = None) -> None:
        self.config = config or AtrConfig()
        self.t_update_s = self.config.tau_min_s
        self.slowdown = False

    def cut(self) -> None:
        """A scene cut: out of slow-down mode, T_update back to τ_min."""
        if self.config.enabled:
            self.slowdown = False
            self.t_update_s = self.config.tau_min_s

    def update(self, rate_fps: float) -> float:
        """Eq. 2 with ASR's latest rate decision r_n; returns the next T_update."""
        cfg = self.config
        if not cfg.enabled:
            return self.t_update_s
        if rate_fps < cfg.enter_below_fps:
            self.slowdown = True
        elif rate_fps > cfg.exit_above_fps:
            self.slowdown = False
        if self.slowdown:
            self.t_update_s = min(self.t_update_s + cfg.step_s, cfg.tau_max_s)
        else:
            self.t_update_s = cfg.tau_min_s
        return self.t_update_s

    def state_dict(self) -> dict[str, object]:
        return {"t_update_s": self.t_update_s, "slowdown": self.slowdown}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.t_update_s = float(state["t_update_s"])
        self.slowdown = bool(state["slowdown"])
