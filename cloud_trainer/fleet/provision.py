"""``cloud-trainer fleet provision DEVICE...``: everything a fleet's broker, trainer and devices
need to talk over TLS with a login each and an ACL, in one directory.

    <dir>/fleet.json                      what was provisioned (no secrets)
    <dir>/ca/ca.pem, ca.key               the fleet's CA (keep ca.key offline)
    <dir>/broker/                         server.pem/.key, passwd, acl, mosquitto.conf
    <dir>/trainer/                        trainer.toml, password, ca.pem, dashboard-token
    <dir>/trainer-front<N>/               the same for the trainer's other MQTT fronts (serve --ray)
    <dir>/monitor/                        monitor.toml ([mqtt] only: read-only, everything)
    <dir>/devices/<id>/                   profile.toml, password, ca.pem, the trainer's public keys

Each device directory is self-contained (its profile names its files relative to itself): copy it
onto the device. Running the command again keeps the CA, the broker's certificate and every
login, adds new devices, and refreshes the bundles (e.g. with the keys of a rotation); then
reload the broker (SIGHUP). Logins are random passwords, stored hashed for the broker.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from cloud_trainer.config import DEFAULT_CONFIG
from cloud_trainer.dashboard.config import DASHBOARD_PORT, new_token_file
from cloud_trainer.fleet import keys, mosquitto, pki
from firmware_configs import PROFILE_DIR
from shared_schema.config_files import (
    KEY_DIR_ENV,
    ConfigFileError,
    expand_path,
    read_toml,
    write_private,
)
from shared_schema.errors import ProtocolError
from shared_schema.topics import (
    Access,
    device_grants,
    observer_grants,
    trainer_grants,
    validate_device_id,
    validate_prefix,
)

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_PORT = 8883
DEFAULT_STATE_DIR = "~/.local/state/amstream"  # on each device: its slots and spool
DASHBOARD_TOKEN = "dashboard-token"  # the trainer's operator token, beside its config
DEFAULT_BROKER_USER = "mosquitto"  # the Debian package's: mosquitto started as root becomes it
TRAINER, MONITOR = "trainer", "monitor"
# The services' logins and what each may do; no device may take one of their names.
SERVICES: dict[str, Callable[[str], list[tuple[Access, str]]]] = {
    TRAINER: trainer_grants,
    MONITOR: observer_grants,
}
# serve --ray's MQTT fronts beyond the first (which logs in as the trainer): a login each, as
# the broker gives each login one connection (the client id is the login name)
_FRONT = re.compile(rf"{TRAINER}-front[1-9][0-9]*")


def front_logins(fronts: int) -> list[str]:
    """The logins of a trainer with ``fronts`` MQTT fronts, the trainer's own excluded."""
    return [f"{TRAINER}-front{i}" for i in range(1, fronts)]


class FleetError(ConfigFileError):
    """A fleet directory or request that cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class Fleet:
    """A provisioned fleet directory: where each file is, and the settings it was made with."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    def identity_dir(self, name: str) -> Path:
        service = name in SERVICES or _FRONT.fullmatch(name)
        return self.root / name if service else self.root / "devices" / name

    @property
    def settings(self) -> dict[str, Any]:
        path = self.root / "fleet.json"
        if not path.is_file():
            fix = f"run cloud-trainer fleet provision --dir {self.root}"
            raise FleetError(f"{path}: missing: {fix}")
        return json.loads(path.read_text())

    @property
    def devices(self) -> list[str]:
        return list(self.settings["devices"])

    def security(self) -> mosquitto.BrokerSecurity:
        broker = self.broker_dir
        return mosquitto.BrokerSecurity(
            ca_file=self.ca_cert,
            cert_file=broker / "server.pem",
            key_file=broker / "server.key",
            password_file=broker / "passwd",
            acl_file=broker / "acl",
        )

    def mqtt_table(self, identity: str, *, relative: bool = False) -> dict[str, Any]:
        """The ``[mqtt]`` table of ``identity`` (a device id or a service): its login, the CA,
        the broker's address; paths inside its bundle when ``relative``."""
        settings, where = self.settings, self.identity_dir(identity)
        if not relative and not (where / "password").is_file():
            raise FleetError(
                f"{self.root}: no login {identity!r}: "
                f"run cloud-trainer fleet provision --dir {self.root} {identity}"
            )
        base = Path() if relative else where
        return {
            "host": settings["hosts"][0],
            "port": settings["port"],
            "prefix": settings["prefix"],
            "username": identity,
            "password_file": str(base / "password"),
            "tls": {"ca_file": str(base / "ca.pem")},
        }


def provision(
    root: Path,
    devices: list[str],
    *,
    hosts: list[str] | None = None,
    port: int | None = None,
    prefix: str | None = None,
    profile: str = "cpu",
    key_dir: Path | None = None,
    state_dir: str | None = None,
    broker_user: str | None = None,
    fronts: int = 1,
) -> dict[str, Any]:
    """Make or extend the fleet in ``root``; returns what was written and how to start it.
    ``fronts``: the trainer's MQTT fronts (serve --ray), each with a login and a config."""
    state_dir, broker_user = state_dir or DEFAULT_STATE_DIR, broker_user or DEFAULT_BROKER_USER
    fleet = Fleet(root)
    _check_request(devices, hosts, port, prefix, profile)  # before anything is written
    if fronts < 1:
        raise FleetError(f"--trainer-fronts {fronts}: give 1 or more")
    settings = _settings(fleet, devices, hosts, port, prefix, fronts)
    key_dir = key_dir or expand_path(f"${{{KEY_DIR_ENV}}}", Path.cwd())
    keys.describe(key_dir)  # the trainer's keys must exist: its error says how to make them
    _pki(fleet, settings["hosts"])
    (root / "fleet.json").write_text(json.dumps(settings, indent=2) + "\n")
    fronts_ = front_logins(settings["fronts"])
    _logins(fleet, [*SERVICES, *fronts_, *settings["devices"]])
    _broker_files(fleet, settings, broker_user)
    for login in (TRAINER, *fronts_):
        _trainer_bundle(fleet, key_dir, login)
    _monitor_bundle(fleet)
    for device_id in settings["devices"]:
        _device_bundle(fleet, device_id, profile, key_dir, state_dir)
    conf = fleet.broker_dir / "mosquitto.conf"
    broker: dict[str, str] = {"config": str(conf), "start": f"mosquitto -c {conf}"}
    if not _hand_to(broker_user, fleet.security().private_files):
        files = " ".join(str(p) for p in fleet.security().private_files)
        broker["before starting"] = f"chown {broker_user} {files}"
    return {
        "fleet": str(root),
        "devices": settings["devices"],
        "broker": broker,
        "trainer": {
            "config": str(fleet.identity_dir(TRAINER) / "trainer.toml"),
            "fronts": [str(fleet.identity_dir(f) / "trainer.toml") for f in fronts_],
        },
        "monitor": {"config": str(fleet.identity_dir(MONITOR) / "monitor.toml")},
        "device profiles": {d: str(fleet.identity_dir(d) / "profile.toml") for d in devices},
    }


def _check_request(
    devices: list[str],
    hosts: list[str] | None,
    port: int | None,
    prefix: str | None,
    profile: str,
) -> None:
    for device_id in devices:
        _valid("device", device_id, validate_device_id)
        if device_id in SERVICES or _FRONT.fullmatch(device_id):
            raise FleetError(f"device {device_id!r}: the name of a service's login; pick another")
    for host in hosts or ():
        if not _is_host(host):
            raise FleetError(f"broker host {host!r}: not an IP address or an ASCII host name")
    if port is not None and not 1 <= port <= 65535:
        raise FleetError(f"port {port}: not a TCP port (1-65535)")
    if prefix is not None:
        _valid("prefix", prefix, validate_prefix)
    if not (PROFILE_DIR / f"{profile}.toml").is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml")))
        raise FleetError(f"profile {profile!r}: not a bundled profile; one of {known}")


def _valid(what: str, value: str, check: Callable[[str], str]) -> None:
    try:
        check(value)
    except ProtocolError as exc:
        raise FleetError(f"{what} {value!r}: {exc.detail}") from exc


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_host(host: str) -> bool:
    """An IP address, or a DNS name of ASCII labels (what a certificate's SAN can hold)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        labels = host.split(".")
        return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _settings(
    fleet: Fleet,
    devices: list[str],
    hosts: list[str] | None,
    port: int | None,
    prefix: str | None,
    fronts: int,
) -> dict[str, Any]:
    wanted = {"hosts": hosts, "port": port, "prefix": prefix}
    if (fleet.root / "fleet.json").is_file():
        known = fleet.settings
        for name, value in wanted.items():
            if value is not None and value != known[name]:
                raise FleetError(
                    f"{fleet.root}: provisioned with {name} {known[name]!r}, not {value!r}: "
                    "provision a new fleet directory to change it"
                )
        devices = sorted({*known["devices"], *devices})
        return {**known, "devices": devices, "fronts": max(known.get("fronts", 1), fronts)}
    return {
        "hosts": list(hosts or DEFAULT_HOSTS),
        "port": port or DEFAULT_PORT,
        "prefix": prefix or "ams",
        "devices": sorted(set(devices)),
        "fronts": fronts,
    }


def _pki(fleet: Fleet, hosts: list[str]) -> None:
    security = fleet.security()
    ca_key_path = fleet.ca_cert.with_name("ca.key")
    if not fleet.ca_cert.exists():
        ca_key, ca_cert = pki.make_ca(f"amstream fleet CA ({fleet.root.name})")
        pki.write_key(ca_key_path, ca_key)
        pki.write_cert(fleet.ca_cert, ca_cert)
    if not security.cert_file.exists():
        key, cert = pki.make_server_cert(*pki.load_ca(fleet.ca_cert, ca_key_path), hosts)
        pki.write_key(security.key_file, key)
        pki.write_cert(security.cert_file, cert)


def _logins(fleet: Fleet, identities: list[str]) -> None:
    """A random password per identity that has none; the broker's file keeps known hashes."""
    password_file = fleet.security().password_file
    hashes = mosquitto.read_password_file(password_file)
    for identity in identities:
        secret = fleet.identity_dir(identity) / "password"
        if not secret.exists() or identity not in hashes:
            password = secrets.token_urlsafe(24)
            write_private(secret, (password + "\n").encode())
            hashes[identity] = mosquitto.password_hash(password)
        shutil.copyfile(fleet.ca_cert, fleet.identity_dir(identity) / "ca.pem")
    write_private(password_file, mosquitto.password_file_text(hashes).encode())


def _broker_files(fleet: Fleet, settings: dict[str, Any], user: str) -> None:
    prefix = settings["prefix"]
    grants = {name: rules(prefix) for name, rules in SERVICES.items()}
    grants |= {f: trainer_grants(prefix) for f in front_logins(settings["fronts"])}
    grants |= {d: device_grants(prefix, d) for d in settings["devices"]}
    security = fleet.security()
    write_private(security.acl_file, mosquitto.acl_text(grants).encode())
    conf = mosquitto.deployment_conf(
        security, port=settings["port"], persistence_dir="/var/lib/mosquitto", user=user
    )
    (fleet.broker_dir / "mosquitto.conf").write_text(conf)


def _hand_to(user: str, paths: tuple[Path, ...]) -> bool:
    """Whether ``user`` can read ``paths`` now: it is us, or we are root and chown them."""
    if user == getpass.getuser():
        return True
    if os.geteuid() != 0:
        return False
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:  # not on this machine: the broker's, presumably
        return False
    for path in paths:
        os.chown(path, uid, -1)
    return True


def _trainer_bundle(fleet: Fleet, key_dir: Path, login: str) -> None:
    raw = read_toml(DEFAULT_CONFIG, FleetError)
    raw["mqtt"] = {**raw["mqtt"], **fleet.mqtt_table(login, relative=True)}
    raw["updates"]["signing_key"] = str((key_dir / f"{keys.CURRENT}.pem").resolve())
    if login == TRAINER:  # the dashboard on loopback, its actions for a token of its own
        token = fleet.identity_dir(TRAINER) / DASHBOARD_TOKEN
        if not token.is_file():
            new_token_file(token)
        raw["dashboard"] |= {"port": DASHBOARD_PORT, "token_file": DASHBOARD_TOKEN}
    _write_toml(fleet.identity_dir(login) / "trainer.toml", raw, "the trainer's config")


def _monitor_bundle(fleet: Fleet) -> None:
    raw = {"mqtt": fleet.mqtt_table(MONITOR, relative=True)}
    _write_toml(fleet.identity_dir(MONITOR) / "monitor.toml", raw, "cloud-trainer monitor --mqtt")


def _device_bundle(
    fleet: Fleet, device_id: str, profile: str, key_dir: Path, state_dir: str
) -> None:
    where = fleet.identity_dir(device_id)
    for stem in (keys.CURRENT, keys.NEXT):
        shutil.copyfile(key_dir / f"{stem}.pub", where / f"{stem}.pub")
    raw = read_toml(PROFILE_DIR / f"{profile}.toml", FleetError)
    raw["device"]["id"] = device_id
    raw["model"] |= {
        "public_key": f"{keys.CURRENT}.pub",
        "next_public_key": f"{keys.NEXT}.pub",
        "slot_dir": f"{state_dir}/{device_id}/slots",
    }
    raw["buffer"]["spool_dir"] = f"{state_dir}/{device_id}/spool"
    raw["mqtt"] = {**raw["mqtt"], **fleet.mqtt_table(device_id, relative=True)}
    _write_toml(where / "profile.toml", raw, f"the {profile} profile of {device_id}")


def _write_toml(path: Path, raw: dict[str, Any], what: str) -> None:
    header = f"# {what}, written by cloud-trainer fleet provision\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + tomli_w.dumps(raw))
