"""``cloud-trainer fleet provision``: the files it writes, and the real mosquitto running on
them: TLS, a login per client, and an ACL under which a device reaches only its own topics."""

from __future__ import annotations

import getpass
import json
import queue
import stat
import subprocess
from pathlib import Path

import pytest

from cloud_trainer.cli import main as trainer_main
from cloud_trainer.config import load_config
from cloud_trainer.fleet import Fleet, FleetError, provision
from cloud_trainer.fleet.keys import KeyDirError
from cloud_trainer.fleet.mosquitto import password_hash, read_password_file
from edge_runtime.profile import load_profile
from shared_schema.endpoint import DeviceEndpoint, TrainerEndpoint
from shared_schema.messages import MessageType, Model
from shared_schema.mqtt import MqttLink, TlsConfig, load_broker_config
from tests.broker import free_port
from tests.mqtt_helpers import Inbox
from tests.samples import UPLINK


def _private(path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_provision_writes_every_file_a_fleet_needs(tmp_path, trainer_keys):
    result = provision(tmp_path / "fleet", ["cam-1", "cam-2"], port=8884, key_dir=trainer_keys)
    fleet = Fleet(tmp_path / "fleet")
    assert result["devices"] == ["cam-1", "cam-2"] == fleet.devices
    assert all(map(_private, [fleet.root / "ca/ca.key", fleet.security().key_file]))
    assert _private(fleet.security().password_file)
    assert set(read_password_file(fleet.security().password_file)) == {
        "cam-1", "cam-2", "trainer", "monitor"
    }  # fmt: skip
    bundle = fleet.identity_dir("cam-2")
    profile = load_profile(bundle / "profile.toml")
    assert (profile.device.id, profile.mqtt.username, profile.mqtt.port) == ("cam-2", "cam-2", 8884)
    assert profile.mqtt.read_password() == (bundle / "password").read_text()[:-1]
    assert profile.mqtt.tls.ca_file.read_bytes() == fleet.ca_cert.read_bytes()
    assert (
        profile.model.public_key.read_bytes() == (trainer_keys / "trainer_ed25519.pub").read_bytes()
    )
    trainer = load_config(fleet.identity_dir("trainer") / "trainer.toml")
    assert trainer.mqtt.username == "trainer" and trainer.mqtt.tls.ca_file.is_file()
    assert trainer.updates.signing_key == (trainer_keys / "trainer_ed25519.pem").resolve()
    # the dashboard on loopback; its actions need the token beside the config, its owner's alone
    assert (trainer.dashboard.port, trainer.dashboard.host) == (8470, "127.0.0.1")
    token = trainer.dashboard.token_file
    assert token == fleet.identity_dir("trainer") / "dashboard-token" and _private(token)
    assert len(token.read_text().strip()) == 32
    acl = fleet.security().acl_file.read_text()
    assert "user cam-1\ntopic write ams/cam-1/up/#\ntopic write ams/cam-1/status\n" in acl
    assert "topic read ams/cam-1/down/#" in acl and "topic write ams/+/down/#" in acl
    conf = (fleet.broker_dir / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 8884" in conf


def test_provisioning_again_keeps_logins_and_adds_devices(tmp_path, trainer_keys):
    root = tmp_path / "fleet"
    provision(root, ["cam-1"], key_dir=trainer_keys)
    fleet = Fleet(root)
    before = read_password_file(fleet.security().password_file)
    ca = fleet.ca_cert.read_bytes()
    token = (fleet.identity_dir("trainer") / "dashboard-token").read_text()
    provision(root, ["cam-3"], key_dir=trainer_keys)
    assert (fleet.identity_dir("trainer") / "dashboard-token").read_text() == token
    after = read_password_file(fleet.security().password_file)
    assert fleet.devices == ["cam-1", "cam-3"] and fleet.ca_cert.read_bytes() == ca
    assert {k: after[k] for k in before} == before and "cam-3" in after


def test_each_trainer_front_gets_a_login_and_a_config_of_its_own(tmp_path, trainer_keys):
    root = tmp_path / "fleet"
    provision(root, ["cam-1"], key_dir=trainer_keys)
    result = provision(root, [], key_dir=trainer_keys, fronts=3)  # added to a fleet, later
    fleet = Fleet(root)
    logins = set(read_password_file(fleet.security().password_file))
    assert {"trainer", "trainer-front1", "trainer-front2"} <= logins
    assert result["trainer"]["fronts"] == [
        str(fleet.identity_dir(f"trainer-front{i}") / "trainer.toml") for i in (1, 2)
    ]
    front = load_config(fleet.identity_dir("trainer-front2") / "trainer.toml")
    assert front.mqtt.username == "trainer-front2" and front.mqtt.read_password()
    assert front.dashboard.port == 0  # the trainer's own login has the dashboard
    acl = fleet.security().acl_file.read_text()
    assert "user trainer-front2\ntopic read ams/+/up/#\n" in acl
    assert provision(root, [], key_dir=trainer_keys)["trainer"]["fronts"]  # they stay
    with pytest.raises(FleetError, match="the name of a service's login"):
        provision(root, ["trainer-front7"], key_dir=trainer_keys)
    with pytest.raises(FleetError, match="give 1 or more"):
        provision(root, [], key_dir=trainer_keys, fronts=0)


@pytest.mark.parametrize(
    ("devices", "options", "message"),
    [
        (["cam/1"], {}, "invalid device id"),
        (["trainer"], {}, "the name of a service's login"),
        (["cam-1"], {"port": 1999}, "provisioned with port 8883, not 1999"),
    ],
)
def test_bad_requests_are_one_line_naming_the_fix(
    tmp_path, trainer_keys, devices, options, message
):
    provision(tmp_path, ["cam-0"], key_dir=trainer_keys)
    with pytest.raises(FleetError, match=message):
        provision(tmp_path, devices, key_dir=trainer_keys, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hosts": ["ü.example"]}, "not an IP address or an ASCII host name"),
        ({"hosts": ["-bad-.example"]}, "not an IP address or an ASCII host name"),
        ({"port": 0}, r"not a TCP port \(1-65535\)"),
        ({"port": 70000}, r"not a TCP port \(1-65535\)"),
        ({"prefix": "a/#"}, "invalid topic prefix"),
        ({"profile": "nope"}, "not a bundled profile; one of .*cpu"),
    ],
)
def test_a_bad_first_request_writes_nothing(tmp_path, trainer_keys, options, message):
    with pytest.raises(FleetError, match=message):
        provision(tmp_path / "fleet", ["cam-1"], key_dir=trainer_keys, **options)
    assert not (tmp_path / "fleet").exists()


def test_provision_needs_the_trainers_keys(tmp_path):
    with pytest.raises(KeyDirError, match="cloud-trainer keys generate"):
        provision(tmp_path / "fleet", ["cam-1"], key_dir=tmp_path / "no-keys")


def test_password_hash_is_mosquittos_pbkdf2_format():
    hashed = password_hash("s3cret", salt=b"\x00" * 12)
    kind, iterations, salt, digest = hashed.split("$")[1:]
    assert (kind, iterations, salt) == ("7", "101", "AAAAAAAAAAAAAAAA")
    assert hashed == password_hash("s3cret", salt=b"\x00" * 12) != password_hash("s3cret")
    assert len(digest) == 88  # 64 bytes of PBKDF2-SHA512, base64


def test_the_command_prints_where_everything_is(tmp_path, trainer_keys, capsys):
    argv = ["fleet", "provision", "--dir", str(tmp_path), "--keys", str(trainer_keys), "cam-1"]
    assert trainer_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["broker"]["start"] == f"mosquitto -c {tmp_path}/broker/mosquitto.conf"
    assert trainer_main(["fleet", "provision", "--dir", str(tmp_path), "trainer"]) == 2
    assert "the name of a service's login" in capsys.readouterr().err


# -- on the real broker --------------------------------------------------------------------------


@pytest.mark.broker
def test_logins_and_tls_are_enforced(broker, stop_later):
    trainer = TrainerEndpoint(broker.client_config("trainer"))
    inbox = Inbox(trainer, [MessageType.HELLO])
    stop_later(trainer).start()
    assert trainer.wait_connected(10)
    device = stop_later(DeviceEndpoint(broker.client_config("cam-1"), "cam-1"))
    device.start()
    hello, _ = UPLINK[0]
    assert device.send(hello).wait(10)
    assert inbox.get()[0].msg == hello
    refused = [
        broker.client_config("cam-2", password="wrong", password_file=None),
        broker.client_config("cam-2", tls=None),  # plain TCP on a TLS listener
        broker.client_config("cam-2", tls=TlsConfig(), username=None, password_file=None),
    ]
    for config in refused:
        link = MqttLink(config, client_id="cam-2")
        link.start()
        assert not link.wait_connected(2), config
        link.stop()
    with pytest.raises(ValueError, match=r"tls\.ca_file: no such file"):
        DeviceEndpoint(broker.client_config("cam-2", tls={"ca_file": "/nope.pem"}), "cam-2")


@pytest.mark.broker
def test_a_device_cannot_touch_another_devices_topics(broker, stop_later):
    trainer = TrainerEndpoint(broker.client_config("trainer"))
    heard = Inbox(trainer, [MessageType.HELLO])
    stop_later(trainer).start()
    victim = stop_later(DeviceEndpoint(broker.client_config("cam-2"), "cam-2"))
    victim_models = Inbox(victim, [MessageType.MODEL])
    victim.start()
    # cam-1's login, speaking as cam-2: the envelope and the topic both say cam-2
    # ... which subscribes to cam-2's downlink, and here to every uplink as well
    impostor = stop_later(DeviceEndpoint(broker.client_config("cam-1"), "cam-2"))
    stolen = Inbox(impostor)
    spy = queue.Queue()
    impostor.link.subscribe("ams/+/up/#", 1, spy.put)
    impostor.start()
    for endpoint in (trainer, victim, impostor):
        assert endpoint.wait_connected(10)
    hello, _ = UPLINK[0]
    assert not impostor.send(hello).wait(5)  # MQTT 5: PUBACK "not authorized"
    assert impostor.counters.get("mqtt.publish_rejected") >= 2  # its status, its hello
    assert trainer.send("cam-2", Model(version=1), b"weights").wait(10)
    assert victim_models.get()[0].body == b"weights"  # cam-2 itself still gets its model
    assert victim.send(hello).wait(10)
    assert heard.get()[0].device_id == "cam-2"  # ... and the trainer hears cam-2
    assert heard.drain() == [] and stolen.drain() == [] and spy.empty()


@pytest.mark.broker
def test_the_generated_mosquitto_conf_serves_every_bundle(tmp_path, trainer_keys):
    """The deployment's own files, as a user starts them: mosquitto -c broker/mosquitto.conf,
    and each client with the config file of its bundle."""
    port = free_port()
    root = tmp_path / "fleet"
    printed = provision(
        root, ["cam-1"], port=port, key_dir=trainer_keys, broker_user=getpass.getuser()
    )
    assert "before starting" not in printed["broker"]  # the broker's user can read its files
    broker = subprocess.Popen(printed["broker"]["start"].split(), stderr=subprocess.PIPE, text=True)
    try:
        fleet = Fleet(root)
        device = DeviceEndpoint(
            load_profile(fleet.identity_dir("cam-1") / "profile.toml").mqtt, "cam-1"
        )
        trainer = TrainerEndpoint(load_broker_config(Path(printed["trainer"]["config"])))
        monitor = MqttLink(load_broker_config(Path(printed["monitor"]["config"])), client_id="m")
        for client in (device, trainer, monitor):
            client.start()
        assert all(c.wait_connected(10) for c in (device, trainer, monitor)), broker.stderr
        for client in (device, trainer, monitor):
            client.stop()
    finally:
        broker.terminate()
        broker.wait(10)


def test_a_broker_user_other_than_us_is_told_what_to_chown(tmp_path, trainer_keys):
    printed = provision(tmp_path, ["cam-1"], key_dir=trainer_keys, broker_user="nobody-here")
    security = Fleet(tmp_path).security()
    assert printed["broker"]["before starting"] == "chown nobody-here " + " ".join(
        str(p) for p in security.private_files
    )
    assert "user nobody-here\n" in (tmp_path / "broker" / "mosquitto.conf").read_text()
