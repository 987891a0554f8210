"""The deployment path a user takes: an offline device bundle installed with no index and run on
the real broker, on every Python the edge package supports; the services' units as systemd
reads them; and the common mistakes, each one line through the real command lines."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
import tomli_w
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cloud_trainer.config import DEFAULT_CONFIG
from cloud_trainer.fleet import pki
from cloud_trainer.prometheus import SESSION_COUNTERS, TrainerMetrics
from cloud_trainer.tools.local_broker import free_port
from edge_runtime.bundle import NAME, needs_system_packages, platform_tags, requirements
from edge_runtime.profile import load_profile
from firmware_configs import PROFILE_DIR
from shared_schema.config_files import read_toml
from shared_schema.endpoint import TrainerEndpoint
from shared_schema.messages import MessageType, Telemetry
from shared_schema.mqtt import MqttLink
from tests.mirror import Mirror
from tests.mqtt_helpers import Inbox

BIN = Path(sys.executable).parent
OTHER_PYTHONS = ("3.10", "3.12")
DASHBOARD = "cloud_trainer/deploy/grafana-dashboard.json"


def _profile(path: Path, broker, device_id: str, **tables: dict) -> Path:
    """A cpu profile for ``device_id`` on the test broker (TLS, its login), written to a file."""
    raw = read_toml(PROFILE_DIR / "cpu.toml", ValueError)
    raw["device"]["id"] = device_id
    raw["model"]["slot_dir"] = str(path.parent / "state" / "slots")
    raw["buffer"]["spool_dir"] = str(path.parent / "state" / "spool")
    raw["mqtt"] = broker.mqtt_table(device_id)
    raw["telemetry"] = {"interval_s": 1.0}
    raw["buffer"]["t_update_s"] = 2.0
    raw["source"] = {"realtime": False}
    for table, values in tables.items():
        raw.setdefault(table, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(raw))
    return path


def _cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})  # fmt: skip


def _offline_env() -> dict[str, str]:
    """pip with no configuration: no index and none of this machine's local wheel folders, so
    only the bundle's own wheels can satisfy it."""
    return {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}


def _install(tmp_path: Path, profile: Path, python_version: str, interpreter: str) -> Path:
    """Bundle ``profile`` for ``python_version``, install it under a root of its own, offline."""
    out = tmp_path / f"device-{python_version}.tar.gz"
    made = _cli(str(BIN / "edge-runtime"), "bundle", "--profile", str(profile), "--out",
                str(out), "--python-version", python_version, timeout=600)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"  # it holds the device's password
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    root = tmp_path / "root"
    script = tmp_path / "unpacked" / NAME / "install.sh"
    done = _cli("sh", str(script), "--root", str(root), "--python", interpreter, timeout=600,
                **_offline_env())  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def _run_installed(root: Path, video: str, frames: int) -> subprocess.CompletedProcess[str]:
    runtime = root / "opt/amstream/venv/bin/edge-runtime"
    profile = root / "etc/amstream/profile.toml"
    return _cli(str(runtime), "run", "--profile", str(profile), "--source", video,
                "--max-frames", str(frames), "--fast", timeout=300)  # fmt: skip


def _other_python(version: str) -> str:
    found = shutil.which(f"python{version}")
    if found and _cli(found, "-c", "pass").returncode == 0:
        return found
    candidates = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    if not candidates:
        pytest.skip(f"no Python {version} on this machine (pyenv install {version})")
    return str(candidates[-1])


# -- the bundle ------------------------------------------------------------------------------


def test_a_manylinux_platform_also_takes_older_manylinux_wheels():
    tags = platform_tags("manylinux_2_28_aarch64")
    assert tags[0] == "manylinux_2_28_aarch64" and "manylinux_2_17_aarch64" in tags
    assert tags[-2:] == ["manylinux2014_aarch64", "linux_aarch64"] and len(tags) == 14
    assert platform_tags("linux_armv7l") == ["linux_armv7l"]


def test_requirements_follow_the_devices_python_not_this_one(tmp_path):
    built = _cli(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                 "-w", str(tmp_path), str(Path(__file__).resolve().parents[1]))  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("amstream-*.whl")
    old, new = requirements(wheel, "3.10", ["edge"]), requirements(wheel, "3.12", ["edge"])
    assert "numpy==2.2.6" in old and "av==17.1.0" in old and "tomli==2.5.0" in old
    assert "numpy==2.4.6" in new and "av==18.1.0" in new and not any("tomli=" in r for r in new)
    assert not any(r.startswith(("torch", "onnx")) for r in old + new)  # the edge extra alone
    assert "onnxruntime==1.32.0" in requirements(wheel, "3.11", ["edge", "jetson"])
    assert "onnxruntime==1.23.2" in requirements(wheel, "3.10", ["edge", "jetson"])


@pytest.mark.slow
@pytest.mark.broker
def test_the_bundle_installs_with_no_index_and_runs_on_the_broker(
    tmp_path, broker, stop_later, shared_dir
):
    profile = _profile(tmp_path / "src" / "profile.toml", broker, "cam-b")
    root = _install(tmp_path, profile, f"{sys.version_info[0]}.{sys.version_info[1]}",
                    sys.executable)  # fmt: skip
    venv_python = root / "opt/amstream/venv/bin/python"
    slim = _cli(
        str(venv_python),
        "-c",
        "import importlib.util as u, edge_runtime.runtime;"
        " print([m for m in ('torch', 'onnx', 'onnxruntime') if u.find_spec(m)])",
    )
    assert slim.returncode == 0 and slim.stdout.strip() == "[]", slim.stdout + slim.stderr
    installed = read_toml(root / "etc/amstream/profile.toml", ValueError)
    assert installed["model"]["slot_dir"] == str(root / "var/lib/amstream/slots")
    assert installed["mqtt"]["tls"]["ca_file"] == "ca.pem"  # beside the profile
    unit = root / "etc/systemd/system/amstream-edge.service"
    assert f"ExecStart={root}/opt/amstream/venv/bin/edge-runtime run" in unit.read_text()
    _verify_unit(unit)

    trainer = TrainerEndpoint(broker.client_config())
    hellos = Inbox(trainer, [MessageType.HELLO, MessageType.SEGMENT])
    plain: queue.Queue = queue.Queue()
    watcher = MqttLink(broker.client_config("monitor", persistent_session=False),
                       client_id="watcher")  # fmt: skip
    watcher.subscribe("ams/cam-b/+", 1, lambda m: plain.put((m.topic, m.payload)))
    for client in (trainer, watcher):
        stop_later(client).start()
        assert client.wait_connected(10)

    ran = _run_installed(root, str(shared_dir / "videos/vtest.avi"), 240)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert json.loads(ran.stdout.strip().splitlines()[-1])["frames"] == 240
    env, topic = hellos.get()
    assert env.type == MessageType.HELLO and topic.device_id == "cam-b"
    seen: dict[str, list[bytes]] = {}
    while not plain.empty():
        topic_name, payload = plain.get()
        seen.setdefault(topic_name.rsplit("/", 1)[1], []).append(payload)
    assert seen["status"][0] == b"online" and seen["status"][-1] == b"offline"
    state = json.loads(seen["state"][-1])
    assert state["fps"] > 0 and "model_version" in state and "up_kbps" in state
    _reinstall_with_system_packages(tmp_path, root)


def _reinstall_with_system_packages(tmp_path: Path, root: Path) -> None:
    """An upgrade whose profile does not check changes nothing; one that does builds a new
    venv and swaps it in whole, the previous one kept for the service still running it. A
    picamera2 profile's venv sees the distribution's packages."""
    unpacked = tmp_path / "unpacked" / NAME
    before = (root / "opt/amstream/venv").resolve()
    profile = root / "etc/amstream/profile.toml"
    installed = profile.read_text()
    model = next((unpacked / "config").glob("*.tflite"))
    kept = model.rename(model.with_suffix(".kept"))  # the new bundle lost its model
    broken = _cli("sh", str(unpacked / "install.sh"), "--root", str(root), "--python",
                  sys.executable, timeout=600, **_offline_env())  # fmt: skip
    assert broken.returncode == 1
    assert "the profile does not check (above); nothing was changed" in broken.stderr
    assert (root / "opt/amstream/venv").resolve() == before and profile.read_text() == installed
    assert sorted(p.name for p in (root / "opt/amstream").iterdir()) == ["venv", before.name]
    kept.rename(model)
    env_file = unpacked / "bundle.env"
    env_file.write_text(env_file.read_text().replace("SITE_PACKAGES=0", "SITE_PACKAGES=1"))
    done = _cli("sh", str(unpacked / "install.sh"), "--root", str(root), "--python",
                sys.executable, timeout=600, **_offline_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = (root / "opt/amstream/venv").resolve()
    assert after != before and before.exists()  # the previous one stays until the next
    assert "include-system-site-packages = true" in (after / "pyvenv.cfg").read_text()
    assert oct(profile.stat().st_mode & 0o777) == "0o600"  # it names the password file


def test_a_picamera2_device_gets_the_distributions_packages():
    assert needs_system_packages(load_profile("rpi-coral-usb"))  # source: picamera2:
    assert not needs_system_packages(load_profile("cpu"))


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.parametrize("version", OTHER_PYTHONS)
def test_the_bundle_runs_on_the_other_pythons_of_the_edge(
    tmp_path, broker, stop_later, shared_dir, version, trainer_key
):
    """On Python 3.10 (JetPack 6: numpy 2.2, PyAV 17) and 3.12, the installed runtime says
    hello and applies a signed qdelta update, hot-swapped while it plays."""
    interpreter = _other_python(version)
    profile = _profile(tmp_path / "src" / "profile.toml", broker, "cam-k")
    root = _install(tmp_path, profile, version, interpreter)
    python = (root / "opt/amstream/venv/bin/python").resolve()
    assert _cli(str(python), "-c", "import sys; print(sys.version)").stdout.startswith(version)
    trainer = TrainerEndpoint(broker.client_config())
    inbox = Inbox(trainer, [MessageType.HELLO, MessageType.ACK])
    stop_later(trainer).start()
    assert trainer.wait_connected(10)
    log = tmp_path / "device.log"
    with log.open("w") as stderr:
        device = subprocess.Popen(
            [str(root / "opt/amstream/venv/bin/edge-runtime"), "run", "--profile",
             str(root / "etc/amstream/profile.toml"), "--source",
             str(shared_dir / "videos/vtest.avi"), "--loop"], stderr=stderr)  # fmt: skip
    try:
        assert inbox.of_type(MessageType.HELLO, timeout=60)[1].device_id == "cam-k"
        initial = next((root / "etc/amstream").glob("*.tflite")).read_bytes()
        mirror = Mirror(initial, key=trainer_key, device_id="cam-k")
        mirror.next_version(1)
        assert trainer.send("cam-k", *mirror.update_message(0, 1)).wait(10)
        ack = inbox.of_type(MessageType.ACK, timeout=60)[0].msg
        assert (ack.ref_type, ack.ok) == ("update", True), (ack, log.read_text()[-2000:])
    finally:
        device.terminate()
        assert device.wait(60) == 0, log.read_text()[-2000:]


def test_install_refuses_a_python_the_wheels_are_not_for(tmp_path):
    unpacked = tmp_path / NAME
    unpacked.mkdir()
    shutil.copy(Path(__file__).parents[1] / "edge_runtime/deploy/install.sh", unpacked)
    (unpacked / "bundle.env").write_text(
        "AMS_PYTHON_VERSION=3.99\nAMS_EXTRAS=edge\nAMS_ADDED_WHEELS=''\nAMS_DEVICE_ID=x\n"
        "AMS_SYSTEM_SITE_PACKAGES=0\n"
    )
    done = _cli("sh", str(unpacked / "install.sh"), "--root", str(tmp_path / "r"),
                "--python", sys.executable)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0  # one line
    assert "the bundle's wheels are for 3.99: give --python python3.99" in done.stderr
    assert not (tmp_path / "r/opt").exists()


# -- services ----------------------------------------------------------------------------------


def _verify_unit(unit: Path) -> None:
    """systemd's own check: a warning (an unknown key, a missing binary) fails it too."""
    done = _cli("systemd-analyze", "verify", str(unit))
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_the_trainer_unit_is_one_systemd_accepts(tmp_path, shared_dir):
    config = tmp_path / "trainer.toml"
    shutil.copy(DEFAULT_CONFIG, config)
    unit = str(BIN / "cloud-trainer"), "unit", "--config", str(config)
    elsewhere = _cli(*unit, "--env", "AMS_SHARED_DIR=/nowhere")  # checked as the service reads it
    assert elsewhere.returncode == 2
    assert "student.model: cannot read /nowhere/models/coral/" in elsewhere.stderr
    done = _cli(*unit, "--env", f"AMS_SHARED_DIR={shared_dir}", "--env", "NOTE=50% sure")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f'\nEnvironment="AMS_SHARED_DIR={shared_dir}"\nEnvironment="NOTE=50%% sure"\n' in text
    assert f"ExecStart={BIN}/cloud-trainer serve --config {config}" in text
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "User=amstream-trainer",
                      "Restart=on-failure", "StateDirectory=amstream-trainer"):  # fmt: skip
        assert hardening in text
    unit = tmp_path / "amstream-trainer.service"
    unit.write_text(text)
    _verify_unit(unit)
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("Restart=on-failure", "Restart=on-failure\nRestartz=1"))
    with pytest.raises(AssertionError, match="Unknown key"):
        _verify_unit(broken)


# -- mistakes a person makes: one line naming the file or address and the fix ------------------


def _edge_run(profile: Path, video: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli(str(BIN / "edge-runtime"), *extra, "run", "--profile", str(profile), "--source",
                video, "--max-frames", "400", timeout=60)  # fmt: skip


def _mistake(broker, tmp_path: Path, case: str) -> tuple[Path, list[str]]:
    """The profile for ``case`` and the extra arguments before ``run``."""
    path = tmp_path / "profile.toml"
    if case == "no profile":
        return tmp_path / "nope.toml", []
    if case == "bad log level":
        return _profile(path, broker, "cam-7"), ["--log-level", "LOUD"]
    fleet = broker.fleet.identity_dir("cam-7")
    other_ca = tmp_path / "other-ca.pem"
    pki.write_cert(other_ca, pki.make_ca("someone else's CA")[1])
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"TFL3" + bytes(range(256)) * 8)
    change = {
        "no model": {"model": {"initial": str(tmp_path / "gone.tflite")}},
        "corrupt model": {"model": {"initial": str(corrupt)}},
        "no key": {"model": {"public_key": str(tmp_path / "gone.pub"), "next_public_key": None}},
        "no CA": {"mqtt": {"tls": {"ca_file": str(tmp_path / "gone.pem")}}},
        "no password file": {"mqtt": {"password_file": str(tmp_path / "gone")}},
        "wrong password": {"mqtt": {"password_file": str(fleet / "../cam-9/password")}},
        "host does not resolve": {"mqtt": {"host": "broker.invalid"}},
        "wrong CA": {"mqtt": {"tls": {"ca_file": str(other_ca)}}},
        "CA is no certificate": {"mqtt": {"tls": {"ca_file": str(fleet / "password")}}},
        "other login's id": {"device": {"id": "cam-9"}},
        "video": {},
    }[case]
    profile = _profile(path, broker, "cam-7", **{k: v for k, v in change.items() if k != "model"})
    if "model" in change:
        raw = read_toml(profile, ValueError)
        raw["model"] |= change["model"]
        raw["model"] = {k: v for k, v in raw["model"].items() if v is not None}
        profile.write_text(tomli_w.dumps(raw))
    return profile, []


# (case, exit status, what the line must say)
MISTAKES = [
    ("no profile", 2, "nope.toml: cannot read: No such file or directory"),
    ("bad log level", 2, "argument --log-level: invalid choice: 'LOUD'"),
    ("no model", 2, "model.initial: {tmp}/gone.tflite: no such file: copy the model there"),
    ("corrupt model", 2, "model.initial {tmp}/corrupt.tflite: LiteRT cannot load the model"),
    ("no key", 2, "model.public_key: {tmp}/gone.pub: no such file: copy the trainer's public"),
    ("no CA", 2, "mqtt.tls.ca_file: {tmp}/gone.pem: no such file: copy the fleet's CA"),
    ("no password file", 2, "mqtt.password_file: {tmp}/gone: no such file: copy the device's"),
    ("wrong password", 2, "refused cam-7: Not authorized: check mqtt.username and mqtt.pass"),
    ("host does not resolve", 2, "mqtt.host 'broker.invalid' does not resolve"),
    ("wrong CA", 2, "TLS to 127.0.0.1:{port}: self-signed certificate in certificate chain: "),
    ("CA is no certificate", 2, "mqtt.tls: ca_file {fleet}/password: not usable"),
    ("video", 1, "cannot open '{tmp}/gone.mp4'"),
]


@pytest.mark.broker
@pytest.mark.parametrize(("case", "status", "says"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_common_mistake_is_one_line_and_a_failing_status(
    tmp_path, broker, shared_dir, case, status, says
):
    profile, extra = _mistake(broker, tmp_path, case)
    video = str(tmp_path / "gone.mp4") if case == "video" else str(shared_dir / "videos/vtest.avi")
    done = _edge_run(profile, video, *extra)
    assert done.returncode == status, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(("error:", "edge-runtime: error:")), last
    fleet = broker.fleet.identity_dir("cam-7")
    assert says.format(tmp=tmp_path, port=broker.port, fleet=fleet) in last, last
    if case not in ("no profile", "bad log level", "host does not resolve", "wrong password"):
        assert str(profile) in last or case == "video"  # it names the file to fix


@pytest.mark.broker
def test_the_trainer_and_the_monitor_say_what_stops_them_in_one_line(tmp_path, broker):
    config = tmp_path / "trainer.toml"
    raw = read_toml(DEFAULT_CONFIG, ValueError)
    wrong = broker.mqtt_table("trainer") | {"password_file": str(
        broker.fleet.identity_dir("monitor") / "password")}  # fmt: skip
    raw["mqtt"] = {**raw["mqtt"], **wrong}
    config.write_text(tomli_w.dumps(raw))
    served = _cli(str(BIN / "cloud-trainer"), "serve", "--config", str(config), timeout=120)
    assert served.returncode == 2 and "Traceback" not in served.stderr
    assert served.stderr.strip().splitlines()[-1] == (
        f"error: {config}: the broker at 127.0.0.1:{broker.port} refused trainer: Not authorized:"
        " check mqtt.username and mqtt.password_file, and that the broker knows this login"
    )
    raw["mqtt"]["tls"] = {"ca_file": str(tmp_path / "gone.pem")}
    config.write_text(tomli_w.dumps(raw))
    served = _cli(str(BIN / "cloud-trainer"), "serve", "--config", str(config), timeout=120)
    assert served.returncode == 2 and "Traceback" not in served.stderr
    assert served.stderr.strip().splitlines()[-1] == (
        f"error: {config}: mqtt.tls.ca_file: no such file {tmp_path}/gone.pem: fix the path"
    )
    del raw["mqtt"]["tls"]
    with socket.create_server(("127.0.0.1", 0)) as taken:  # the dashboard's port, in use
        port = taken.getsockname()[1]
        raw["dashboard"] = {"port": port}
        config.write_text(tomli_w.dumps(raw))
        served = _cli(str(BIN / "cloud-trainer"), "serve", "--config", str(config), timeout=120)
    assert served.returncode == 2 and "Traceback" not in served.stderr
    assert (
        served.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {config}: [dashboard] port {port} on 127.0.0.1: ")
    )
    monitor_dir = broker.fleet.identity_dir("monitor")
    wrong_password = str(tmp_path / "trainer.toml")
    watched = _cli(str(BIN / "cloud-trainer"), "monitor", "--port", str(broker.port),
                   "--ca-file", str(monitor_dir / "ca.pem"), "--username", "monitor",
                   "--password-file", wrong_password, "--timeout", "30")  # fmt: skip
    assert watched.returncode == 2 and "Traceback" not in watched.stderr
    assert "refused monitor: Not authorized: check" in watched.stderr.splitlines()[-1]


@pytest.mark.broker
def test_check_profile_files_names_every_missing_file(tmp_path, broker):
    profile = _profile(tmp_path / "p.toml", broker, "cam-7",
                       mqtt={"tls": {"ca_file": str(tmp_path / "ca.pem")},
                             "password_file": str(tmp_path / "pw")})  # fmt: skip
    done = _cli(str(BIN / "edge-runtime"), "check-profile", "--files", str(profile))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert [line.split(": ")[2] for line in lines] == ["mqtt.password_file", "mqtt.tls.ca_file"]


@pytest.mark.broker
def test_an_unreachable_broker_is_logged_with_its_reason_at_each_retry(
    tmp_path, broker, shared_dir
):
    profile = _profile(tmp_path / "p.toml", broker, "cam-7", mqtt={"port": 1})
    video = str(shared_dir / "videos/vtest.avi")
    done = _cli(str(BIN / "edge-runtime"), "run", "--profile", str(profile), "--source", video,
                "--max-frames", "60", timeout=120)  # fmt: skip
    assert done.returncode == 0  # a device runs offline: it spools, and keeps trying
    retries = [line for line in done.stderr.splitlines() if "cannot connect to the broker" in line]
    assert len(retries) >= 2, done.stderr[-2000:]
    assert "127.0.0.1:1: connection refused (is the broker running" in retries[0]
    assert "retrying in 0.1 s (attempt 1)" in retries[0]
    assert "retrying in 0.2 s (attempt 2)" in retries[1]  # doubling, up to reconnect_max_s


@pytest.mark.broker
def test_the_device_can_serve_its_own_prometheus_metrics(tmp_path, broker, shared_dir):
    port = free_port()
    profile = _profile(tmp_path / "p.toml", broker, "cam-7",
                       telemetry={"interval_s": 0.5, "prometheus_port": port})  # fmt: skip
    video = str(shared_dir / "videos/vtest.avi")
    log = tmp_path / "device.log"
    with log.open("w") as stderr:
        device = subprocess.Popen([str(BIN / "edge-runtime"), "run", "--profile", str(profile),
                                   "--source", video, "--loop"], stderr=stderr)  # fmt: skip
    try:
        assert _scrape_until(port, "amstream_device_frames_total", timeout=60) > 0
    finally:
        device.terminate()
        assert device.wait(30) == 0, log.read_text()[-2000:]


def _scrape_until(port: int, sample: str, timeout: float) -> float:
    """The value of ``sample{device=...}`` once the endpoint has it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        except OSError:
            time.sleep(0.5)
            continue
        for family in text_string_to_metric_families(text.decode()):
            for s in family.samples:
                if s.name == sample and s.labels == {"device": "cam-7"}:
                    return s.value
        time.sleep(0.5)
    raise AssertionError(f"no {sample} on port {port} within {timeout} s")


def test_the_grafana_dashboard_asks_only_for_figures_the_trainer_exports():
    metrics = TrainerMetrics()
    counts = dict.fromkeys(SESSION_COUNTERS, 1)
    metrics.session({"device_id": "cam-1", "mirror_version": 3, "sampling_rate_fps": 0.5,
                     "training_seconds_last": 12.0, **counts})  # fmt: skip
    metrics.telemetry("cam-1", Telemetry(uptime_s=9, fps=25, latency_p50_ms=30, latency_p95_ms=40,
                                         frames=9, frames_sampled=1, swaps=1, bytes_up=9,
                                         bytes_down=9, spool_depth=0, model_version=3))  # fmt: skip
    metrics.online("cam-1", True)
    registry = CollectorRegistry()
    registry.register(metrics)
    exported = {s.name for f in text_string_to_metric_families(
        generate_latest(registry).decode()) for s in f.samples}  # fmt: skip
    dashboard = json.loads((Path(__file__).parents[1] / DASHBOARD).read_text())
    asked = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"amstream_\w+", target["expr"])}  # fmt: skip
    assert len(asked) >= 10 and asked <= exported, asked - exported
