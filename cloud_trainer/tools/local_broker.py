"""A mosquitto broker of one's own, on a free loopback port with a generated config: for the
demo, the serving benchmark and the tests (mosquitto comes from the Debian package). Given a
provisioned fleet (``cloud_trainer.fleet``), it runs as the fleet's broker does: TLS, a login
per client, the fleet's ACL."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cloud_trainer.fleet import Fleet, keys, provision
from cloud_trainer.fleet.provision import TRAINER
from shared_schema.mqtt import BrokerConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBroker:
    """One mosquitto process; ``restart`` keeps its port and its persistence file."""

    def __init__(
        self,
        workdir: Path,
        *,
        fleet: Fleet | None = None,
        extra_conf: str = "",
        listener_conf: str = "",
    ) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError(
                "mosquitto is not installed: run scripts/install.sh (Debian package 'mosquitto')"
            )
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        self.fleet = fleet
        if fleet is not None:
            security = fleet.security()
            extra_conf = security.global_conf() + extra_conf
            listener_conf = security.listener_conf() + listener_conf
        self.conf_path.write_text(
            f"""
user {getpass.getuser()}
per_listener_settings false
persistence true
persistence_location {workdir}/
autosave_interval 1
log_dest file {self.log_path}
log_type error
log_type warning
log_type notice
log_type information
max_queued_messages 100000
max_inflight_messages 20
{extra_conf}
listener {self.port} {self.host}
{listener_conf or "allow_anonymous true"}
"""
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def mqtt_table(self, identity: str = TRAINER) -> dict[str, object]:
        """The ``[mqtt]`` table of a client of this broker, with quick reconnects; on a fleet's
        broker it logs in as ``identity`` (a device id, or a service: trainer, monitor)."""
        login = {} if self.fleet is None else self.fleet.mqtt_table(identity)
        fast = {"reconnect_min_s": 0.1, "reconnect_max_s": 1.0}
        return {**login, "host": self.host, "port": self.port, **fast}

    def client_config(self, identity: str = TRAINER, **overrides: object) -> BrokerConfig:
        return BrokerConfig.model_validate({**self.mqtt_table(identity), **overrides})

    def start(self, timeout: float = 10.0) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # not in the terminal's process group: Ctrl-C stops its clients, which then
            # disconnect cleanly; the broker stops last, when its owner stops it
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_text()}")

    def stop(self) -> None:
        """Graceful stop: mosquitto saves sessions and retained messages to its persistence file."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self, downtime_s: float = 0.0) -> None:
        self.stop()
        time.sleep(downtime_s)
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class LocalFleet:
    """A self-contained run, secured as a deployment is: the trainer's keys and the fleet's
    broker (TLS, a login per client, the ACL)."""

    broker: LocalBroker
    signing_key: Path  # the trainer signs with it
    device_keys: dict[str, str]  # the devices' [model] public_key and next_public_key


@contextlib.contextmanager
def local_fleet(workdir: Path, devices: list[str]) -> Iterator[LocalFleet]:
    """Fresh keys, a fleet provisioned for ``devices`` and its broker, all under ``workdir``."""
    signing_key, device_keys = keys.for_this_run(workdir / "keys")
    # the broker runs as us (LocalBroker's ``user``)
    provision(workdir / "fleet", devices, key_dir=workdir / "keys", broker_user=getpass.getuser())
    with LocalBroker(workdir / "broker", fleet=Fleet(workdir / "fleet")) as broker:
        yield LocalFleet(broker, signing_key, device_keys)
