"""``[ray]``: how the trainer's sessions run on a Ray cluster (``serve --ray``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field("amstream", min_length=1)  # the session actors' names live here
    # the fronts' shared subscription group (one MQTT topic level)
    group: str = Field("trainers", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # what each session actor reserves on its node; Ray sets its threads (OMP) to num_cpus
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)  # a fraction shares a GPU between sessions
    max_restarts: int = Field(-1, ge=-1)  # of a dead session actor; -1: always
