import json
import re
import subprocess
import sys
import threading

import pytest

from cloud_trainer.cli import main as trainer_main
from edge_runtime.cli import main as edge_main
from shared_schema.endpoint import DeviceEndpoint
from shared_schema.mqtt import Outbound
from tests.samples import UPLINK
from tests.trainer_helpers import write_toml


def _subcommands(help_text: str) -> set[str]:
    # argparse lists each subcommand indented by exactly four spaces; wrapped help by more
    listing = help_text.split("positional arguments:")[1].split("options:")[0]
    return set(re.findall(r"^ {4}(\S+)", listing, re.MULTILINE))


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("edge-runtime", {"check-profile", "run", "bench", "bundle"}),
        (
            "cloud-trainer",
            {
                "demo",
                "monitor",
                "serve",
                "unit",
                "import-tflite",
                "bench-updates",
                "bench-serve",
                "bench-dashboard",
                "export",
                "evaluate",
                "keys",
                "fleet",
                "opa",
            },
        ),
    ],
)
def test_console_scripts_list_their_subcommands(script, expected):
    exe = subprocess.run(
        [sys.executable, "-c", "import sysconfig;print(sysconfig.get_path('scripts'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = subprocess.run([f"{exe}/{script}", "--help"], capture_output=True, text=True, check=True)
    assert _subcommands(out.stdout) == expected


def test_check_profile_prints_the_resolved_profile(capsys, shared_dir):
    assert edge_main(["check-profile", "cpu", "--files"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["model"]["initial"].startswith(str(shared_dir))


def test_check_profile_reports_missing_files(capsys):
    assert edge_main(["check-profile", "coral-devboard", "--files"]) == 1
    err = capsys.readouterr().err
    assert "error: coral-devboard: model.initial: /opt/amstream/models/" in err
    assert "_edgetpu.tflite: no such file: copy the model there" in err


def test_check_profile_names_the_bad_field(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[device]\nid = "a"\ndevice_class = "cpu"\n')
    assert edge_main(["check-profile", str(bad)]) == 2
    assert "name: Field required" in capsys.readouterr().err


@pytest.mark.broker
def test_monitor_prints_decoded_traffic_and_rejections(broker, capsys, tmp_path):
    monitor_toml = write_toml({"mqtt": broker.mqtt_table("monitor")}, tmp_path / "monitor.toml")
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault(
            "rc",
            trainer_main(
                ["monitor", "--mqtt", str(monitor_toml), "--count", "3", "--timeout", "20"]
            ),
        )
    )
    thread.start()
    # The monitor connects in the background: keep publishing until it has seen three.
    device = DeviceEndpoint(broker.client_config("cam-1"), "cam-1")
    device.start()
    assert device.wait_connected(10)
    hello, _ = UPLINK[0]
    deadline = 40
    while thread.is_alive() and deadline:
        device.send(hello).wait(5)
        device.link.publish(Outbound("ams/cam-1/up/segment", b"\x00" * 64, qos=1)).wait(5)
        thread.join(0.5)
        deadline -= 1
    device.stop()
    assert result.get("rc") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3
    kinds = {r.get("msg", {}).get("type") or r.get("rejected") or r.get("plain") for r in records}
    assert kinds <= {"online", "hello", "bad_magic"} and len(kinds) >= 2  # status is plain text
    decoded = [r for r in records if r.get("msg", {}).get("type") == "hello"]
    assert all(r["device_id"] == "cam-1" and r["msg"]["profile"] == "cpu" for r in decoded)


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--config", "{missing}"],
        ["bench-updates", "--video", "v.avi", "--config", "{missing}"],
        ["bench-serve", "--devices", "1", "--video", "v.avi", "--config", "{missing}"],
        ["monitor", "--mqtt", "{missing}"],
    ],
)
def test_an_unreadable_trainer_config_is_one_line_naming_it(argv, tmp_path, capsys):
    missing = tmp_path / "trainer.toml"
    assert trainer_main([a.format(missing=missing) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {missing}: cannot read: No such file or directory"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[broker]\nport = 1\n", "no [mqtt] table"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: Input should be less than or equal to 65535"),
        (
            '[mqtt]\nusername = "x"\npassword = "a"\npassword_file = "b"\n',
            "mqtt: give password or password_file, not both",
        ),
    ],
)
def test_a_bad_mqtt_table_is_one_line_naming_the_field(text, message, tmp_path, capsys):
    path = tmp_path / "monitor.toml"
    path.write_text(text)
    assert trainer_main(["monitor", "--mqtt", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {path}: {message}"
