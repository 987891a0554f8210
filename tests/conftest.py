from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared_schema.config_files import find_shared_dir
from tests.broker import Mosquitto, env_flag


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data (models, videos) beside the project. Skipped where it is absent, except
    under AMS_REQUIRE_SHARED=1 (CI), where its absence is a failure."""
    found = find_shared_dir()
    if found is None or not (found / "models").is_dir():
        message = "shared data not found: set AMS_SHARED_DIR or put it at ../shared"
        if env_flag("AMS_REQUIRE_SHARED"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh mosquitto on a free loopback port, stopped after the test."""
    server = Mosquitto(tmp_path / "broker")
    server.start()
    yield server
    server.stop()
