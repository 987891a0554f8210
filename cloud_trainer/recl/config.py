"""``[recl]`` in trainer.toml: RECL's settings (seed 003 §6.3), off by default."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AdmissionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(0.02, ge=0.0, le=1.0)  # mIoU above every other candidate (0.02: 2 points)
    queue: int = Field(1, ge=1, le=64)  # promising models that join together
    eta: int = Field(1, ge=0)  # picks in the last q selections an expert needs to stay
    q: int = Field(3000, ge=1)  # selections the pruning rule looks back over (~a day, §6.3.3)
    # a model trained on from an expert takes its place where the expert is the check's best
    # and the model beats it by refine_by (false: experts stay as they joined, as in §6.3.3)
    refine: bool = True
    refine_by: float = Field(0.005, ge=0.0, le=1.0)


class ReclConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False  # the zoo, its gating network and the safety check
    # who gets the training slot when several sessions have a phase due: in turn, or the one
    # that gained most mIoU per second of training in its last phase (Algorithm 4), none
    # passed over more than max_wait times in a row
    scheduler: Literal["round-robin", "marginal-gain"] = "round-robin"
    max_wait: int = Field(8, ge=1, le=1000)
    directory: Path | None = None  # the zoo's; default: "_zoo" beside the sessions' checkpoints
    capacity: int = Field(32, ge=1, le=4096)  # experts kept; one more evicts the least picked
    top_k: int = Field(4, ge=1, le=64)  # experts the gating network sends to the safety check
    samples: int = Field(4, ge=1, le=64)  # newest samples the safety check judges on
    margin: float = Field(0.02, ge=0.0, le=1.0)  # mIoU a switch must gain (0.02: two points)
    # after a scene cut the device is told to send its next segment this soon (a control's
    # T_update, ATR's again from the segment after), so that the check judges the new scene on
    # a few frames within seconds, not on the cut's frame alone or an update window later;
    # 0: no look
    look_s: float = Field(3.0, ge=0.0, le=3600.0)
    gating_frames: int = Field(32, ge=1, le=1024)  # frames the gating network learns from
    gating_steps: int = Field(100, ge=1, le=10_000)  # Adam steps per gating update
    admission: AdmissionConfig = AdmissionConfig()
