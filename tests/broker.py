"""The tests' broker is the project's local mosquitto launcher."""

from __future__ import annotations

import os

from cloud_trainer.tools.local_broker import LocalBroker as Mosquitto
from cloud_trainer.tools.local_broker import free_port

__all__ = ["Mosquitto", "env_flag", "free_port"]


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")
