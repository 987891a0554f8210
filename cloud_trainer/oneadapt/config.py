"""``[oneadapt]`` in trainer.toml: the DNNGrad the trainer sends (seed 000), off by default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OneAdaptConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False  # after each segment, the teacher's DNNGrad on its last frame
    threshold: float = Field(0.5, ge=0.0, lt=1.0)  # θ: the confidence an object pixel counts at
