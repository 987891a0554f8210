"""The names the command line offers, kept free of heavy imports (torch) so that building the
``cloud-trainer`` parser stays fast."""

from __future__ import annotations

from enum import StrEnum


class SchemeName(StrEnum):
    NO_CUSTOM = "no_custom"
    ONE_TIME = "one_time"
    REMOTE_TRACKING = "remote_tracking"
    JIT = "jit"
    AMS = "ams"
    ORACLE = "oracle"  # the headroom, not a scheme a device could run


PRESETS = ("quick", "paper")
