from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_trainer.tools import keys
from shared_schema.config_files import KEY_DIR_ENV, find_shared_dir
from shared_schema.signing import load_private_key
from tests.broker import Mosquitto, env_flag


@pytest.fixture(scope="session", autouse=True)
def trainer_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests run signed, as a deployment does: a key directory of their own, named by
    $AMS_KEY_DIR, which the bundled cpu profile and the default trainer config read (devices
    started in subprocesses inherit it)."""
    directory = tmp_path_factory.mktemp("keys")
    keys.generate(directory)
    saved = os.environ.get(KEY_DIR_ENV)
    os.environ[KEY_DIR_ENV] = str(directory)
    yield directory
    if saved is None:
        del os.environ[KEY_DIR_ENV]
    else:
        os.environ[KEY_DIR_ENV] = saved


@pytest.fixture(scope="session")
def trainer_key(trainer_keys: Path) -> Ed25519PrivateKey:
    """The key the trainer signs with in the tests (devices trust it)."""
    return load_private_key(trainer_keys / "trainer_ed25519.pem")


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
