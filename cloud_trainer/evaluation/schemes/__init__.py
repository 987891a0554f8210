"""The five schemes of seed 002 §4.1 and the offline oracle, by name."""

from __future__ import annotations

from collections.abc import Callable

from cloud_trainer.evaluation.names import SchemeName
from cloud_trainer.evaluation.schemes.base import Context, Scheme
from cloud_trainer.evaluation.schemes.jit import JustInTime
from cloud_trainer.evaluation.schemes.oracle import FloatOracle, Oracle
from cloud_trainer.evaluation.schemes.remote_tracking import RemoteTracking
from cloud_trainer.evaluation.schemes.session_driven import ams, no_custom, one_time

SCHEMES: dict[SchemeName, Callable[[Context], Scheme]] = {
    SchemeName.NO_CUSTOM: no_custom,
    SchemeName.ONE_TIME: one_time,
    SchemeName.REMOTE_TRACKING: RemoteTracking,
    SchemeName.JIT: JustInTime,
    SchemeName.AMS: ams,
    SchemeName.ORACLE: Oracle,
    SchemeName.ORACLE_FLOAT: FloatOracle,
}

__all__ = ["SCHEMES", "Context", "Scheme"]
