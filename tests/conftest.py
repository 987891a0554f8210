from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_trainer.fleet import Fleet, keys, provision
from cloud_trainer.memory import keep_freed_memory
from shared_schema.config_files import KEY_DIR_ENV, find_shared_dir
from shared_schema.signing import load_private_key
from tests.broker import Mosquitto, env_flag

keep_freed_memory()  # the tests' training runs as cloud-trainer's does

Stoppable = TypeVar("Stoppable", bound=Any)


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


# Every device id a test logs in with on the fleet's broker.
TEST_DEVICES = ("cam-1", "cam-2", "cam-7", "cam-9", "cam-a", "cam-b", "cam-k", "cpu-0", "t", "d")


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory, trainer_keys: Path) -> Fleet:
    """A provisioned fleet (CA, broker certificate, logins, ACL) the tests' brokers run on, with
    a second login for the trainer's fronts (serve --ray)."""
    root = tmp_path_factory.mktemp("fleet")
    user = getpass.getuser()
    provision(root, list(TEST_DEVICES), key_dir=trainer_keys, broker_user=user, fronts=2)
    return Fleet(root)


@pytest.fixture
def stop_later() -> Iterator[Callable[[Stoppable], Stoppable]]:
    """``stop_later(endpoint)`` returns it, and stops it after the test (last one first)."""
    started: list[Stoppable] = []

    def later(endpoint: Stoppable) -> Stoppable:
        started.append(endpoint)
        return endpoint

    yield later
    for endpoint in reversed(started):
        endpoint.stop(timeout=2.0)


@pytest.fixture
def broker(tmp_path: Path, fleet: Fleet) -> Iterator[Mosquitto]:
    """A fresh mosquitto on a free loopback port, secured as a fleet's broker is (TLS, a login
    per client, the ACL: ``broker.client_config(identity)``), stopped after the test."""
    server = Mosquitto(tmp_path / "broker", fleet=fleet)
    server.start()
    yield server
    server.stop()
