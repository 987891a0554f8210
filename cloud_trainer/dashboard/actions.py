"""What an operator may do to a device from the dashboard: typed, validated at the door, and
run by the daemon on its worker between two session steps (``Session.act``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared_schema.messages import Fps, Version


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pause(_Action):
    """No training phases and no updates for the device; its segments are still labelled (its
    sampling rate and the dashboard's accuracy go on)."""

    kind: Literal["pause"] = "pause"


class Resume(_Action):
    kind: Literal["resume"] = "resume"


class Rollback(_Action):
    """Back to a version the trainer still holds; training goes on from it."""

    kind: Literal["rollback"] = "rollback"
    version: Version


class SamplingBounds(_Action):
    """The device's own [r_min, r_max] for ASR (seed 002 eq. 1) in place of the trainer's."""

    kind: Literal["sampling"] = "sampling"
    min_fps: Fps
    max_fps: Fps

    @model_validator(mode="after")
    def _ordered(self) -> SamplingBounds:
        if self.min_fps > self.max_fps:
            raise ValueError("min_fps must not exceed max_fps")
        return self


Action = Annotated[Pause | Resume | Rollback | SamplingBounds, Field(discriminator="kind")]


class ActionRefused(Exception):
    """An action that cannot be done; the message says why, in one line."""
