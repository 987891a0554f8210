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
    ORACLE_FLOAT = "oracle_float"  # the same in float32: what the int8 grid costs at best


# What ``evaluate`` runs unless told: all but the float oracle (a precision study).
DEFAULT_SCHEMES = tuple(s for s in SchemeName if s != SchemeName.ORACLE_FLOAT)
PRESETS = ("quick", "paper")

# What ``evaluate --fleet`` runs: the pretrained student, AMS, AMS with RECL's zoo, RECL, and
# RECL with a perfect gating network (the ideal-reuse bound).
FLEET_SCHEMES = ("no_custom", "ams", "ams_zoo", "recl", "ideal_reuse")

# What ``evaluate --uplink`` runs (issue 15): the fixed configuration, a bitrate sweep (the
# Pareto curve), AWStream-style profiling and OneAdapt.
UPLINK_SCHEMES = ("fixed", "sweep", "awstream", "oneadapt")
# What OneAdapt can adapt (``--oneadapt-knobs``): quality always, the others where asked.
ONEADAPT_KNOBS = ("quality", "resolution", "regions")
