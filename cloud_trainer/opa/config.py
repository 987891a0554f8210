"""``[opa]`` in trainer.toml: how the trainer keeps an elastic student's OPA selection up."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OpaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Every this many phases an elastic student's selection is refitted and sent (0: never).
    refit_phases: int = Field(5, ge=0)
    # Frames the refit is fitted on: each measured on the device's model when it arrived,
    # before any phase trained on it; the newest `frames` are kept.
    frames: int = Field(32, ge=2, le=1024)
    per_phase: int = Field(4, ge=1, le=64)  # of each phase's new samples, at most this many
