"""The trainer's commands as a user runs them: the demo (its run with two devices is in
test_dashboard_browser.py), import-tflite and bench-updates."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cloud_trainer.ams.training import TrainingConfig
from cloud_trainer.cli import main
from cloud_trainer.tools.bench_updates import bench_updates

STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
TEACHER = "models/coral/deeplabv3_mnv2_pascal_quant.tflite"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "0"], "--devices 0: between 1 and 64"),
        (["--duration", "-5"], "--duration -5.0: must be positive"),
        (["--broker", "localhost"], "--broker localhost: expected HOST:PORT"),
        (["--broker", "localhost:70000"], "--broker localhost:70000: expected HOST:PORT"),
        (["--video", "/no/such.mp4"], "no such video: /no/such.mp4"),
        (["--dashboard-port", "70000"], "--dashboard-port 70000: between 0 (a free one) and 65535"),
    ],
)
def test_demo_refuses_bad_arguments_before_starting_anything(shared_dir, capsys, args, message):
    assert main(["demo", *args]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_demo_refuses_a_dashboard_port_in_use(shared_dir, capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["demo", "--dashboard-port", str(port)]) == 2
    assert capsys.readouterr().err == (
        f"error: --dashboard-port {port}: in use on 127.0.0.1 (another demo or trainer?): pick"
        " another, or 0 for a free one\n"
    )


@pytest.mark.slow
@pytest.mark.broker
def test_demo_stops_cleanly_on_ctrl_c(shared_dir, tmp_path):
    out = tmp_path / "report"
    command = "import sys; from cloud_trainer.cli import main; sys.exit(main())"
    video = str(shared_dir / "videos" / "vtest.avi")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-c",
            command,
            "demo",
            "--duration",
            "300",
            "--out",
            str(out),
            "--video",
            video,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    time.sleep(30)
    os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C sends: to every process of the group
    output, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, output
    assert "demo: stopping (Ctrl-C)" in output, output
    assert "Traceback" not in output, output
    report = json.loads((out / "report.json").read_text())
    assert report["devices"][0]["frames"] > 50


def test_import_tflite_reports_agreement_and_refuses_edgetpu_files(shared_dir, capsys):
    assert (
        main(
            [
                "import-tflite",
                str(shared_dir / STUDENT),
                "--check",
                str(shared_dir / "videos/vtest.avi"),
                "--frames",
                "2",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["pixel_agreement"] >= 0.995 and report["parameters"] == 688_357
    edgetpu = shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant_edgetpu.tflite"
    assert main(["import-tflite", str(edgetpu)]) == 2
    assert "edgetpu-custom-op" in capsys.readouterr().err


def test_bench_updates_compares_the_three_formats(shared_dir):
    results = bench_updates(
        str(shared_dir / "videos/vtest.avi"),
        student_model=shared_dir / STUDENT,
        teacher_model=shared_dir / TEACHER,
        updates=1,
        held_out=2,
        training=TrainingConfig(iterations=2, batch_size=1, resolution=(129, 129)),
    )
    sizes = results["mean_bytes_per_update"]
    assert set(sizes) == {"qdelta", "ams-fp16", "zpatch"} and all(v > 0 for v in sizes.values())
    assert results["qdelta_vs_ams_ratio"] == pytest.approx(sizes["qdelta"] / sizes["ams-fp16"])
    assert results["qdelta_label_agreement_min"] >= 0.995


@pytest.mark.slow
@pytest.mark.broker
def test_bench_serve_loses_no_message(shared_dir, tmp_path):
    from cloud_trainer.tools.bench_serve import bench_serve
    from tests.trainer_helpers import trainer_config

    results = bench_serve(
        shared_dir / "videos/vtest.avi",
        devices=1,
        duration_s=25,
        config=trainer_config(tmp_path),
        sweep=False,
        settle_s=60,
    )
    assert results["message_loss"] == 0
    assert results["updates_delivered"][0] >= 1 and all(results["in_sync"])
    (seconds,) = results["training_seconds_per_phase"].values()
    assert seconds > 0
    # where a phase's time goes: its steps' stages add up to (nearly all of) the phase
    breakdown = results["phase_breakdown"]
    stages = breakdown["seconds_per_phase"]
    assert {"decode", "teacher", "phase.select", "phase.batch", "phase.forward", "phase.backward",
            "phase.optimizer", "checkpoint", "write_back"} <= set(stages)  # fmt: skip
    in_phase = sum(v for k, v in stages.items() if k.startswith("phase."))
    assert 0.9 * seconds <= in_phase <= seconds
    in_steps = in_phase - stages["phase.select"]  # 2 iterations: 2 steps
    assert breakdown["step_seconds"] == pytest.approx(in_steps / 2, rel=0.01)
    assert 0.0 < breakdown["step_outside_network"] < 1.0
    # whether the session kept pace: phases spaced by the time between them, against T_update
    (interval,) = results["rounds"][0]["phase_interval_s"].values()
    (t_update,) = results["rounds"][0]["t_update_s"].values()
    assert results["keeps_pace"] == (interval is not None and interval <= 1.2 * t_update)
    # the step alone, beside its plain forward pass and the same network in float
    step = results["step"]
    assert step["steps"] == 2 and step["threads"] >= 1
    assert step["step_seconds"] == pytest.approx(sum(step["step_stage_seconds"].values()), 0.01)
    assert step["step_over_forward"] == pytest.approx(
        step["step_seconds"] / step["forward_seconds"], rel=0.01
    )
    assert step["float_step_seconds"] > 0


def _session(ends: list[float], t_update: float = 10.0) -> SimpleNamespace:
    return SimpleNamespace(phase_ends=ends, t_update_s=t_update)


def test_a_session_keeps_pace_when_its_phases_come_within_a_fifth_of_t_update():
    from cloud_trainer.tools.bench_serve import _pace

    def pace(**sessions):
        return _pace(sessions, (20.0, 100.0))

    every_10 = [5.0, 15.0, 25.0, 35.0, 45.0, 55.0]  # the first two are before the window
    assert pace(a=_session(every_10))["keeps_pace"]
    assert pace(a=_session([21.0, 33.0, 45.0]))["keeps_pace"]  # 12 s: the limit
    late = pace(a=_session(every_10), b=_session([21.0, 34.0, 47.0]))  # b: 13 s
    assert not late["keeps_pace"] and late["phase_interval_s"]["b"] == pytest.approx(13.0)
    assert not pace(a=_session([30.0]))["keeps_pace"]  # one phase in the window: no pace
    assert pace(a=_session([21.0, 40.0], t_update=16.0))["keeps_pace"]  # ATR's T_update
    assert not pace()["keeps_pace"]  # no session at all


def test_find_capacity_doubles_then_bisects(monkeypatch, tmp_path):
    from cloud_trainer.tools import bench_serve
    from tests.trainer_helpers import trainer_config

    tried = []

    def serve_round(config, video, devices, duration_s, settle_s, on_ray):
        tried.append(devices)
        return {"devices": devices, "keeps_pace": devices <= 5, "message_loss": 0}

    monkeypatch.setattr(bench_serve, "serve_round", serve_round)
    monkeypatch.setattr(bench_serve, "bench_step", lambda config, video: {})
    config = trainer_config(tmp_path)
    found = bench_serve.find_capacity(Path("v.avi"), max_devices=32, config=config)
    assert found["capacity"] == 5 and tried == [1, 2, 4, 8, 6, 5]
    assert [r["devices"] for r in found["rounds"]] == [1, 2, 4, 5, 6, 8]
    tried.clear()
    capped = bench_serve.find_capacity(Path("v.avi"), max_devices=3, config=config)
    assert capped["capacity"] == 3 and tried == [1, 2, 3]
    tried.clear()
    monkeypatch.setattr(bench_serve, "serve_round", lambda *a: {"keeps_pace": False,
                                                                "message_loss": 0})  # fmt: skip
    assert bench_serve.find_capacity(Path("v.avi"), max_devices=8, config=config)["capacity"] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "bench-serve: --devices N is required (or --find-capacity, --ray)"),
        (["--devices", "0"], "--devices 0: expected 1 to 1000"),
    ],
)
def test_bench_serve_without_a_device_count_is_one_line(argv, message, capsys):
    assert main(["bench-serve", "--video", "v.avi", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


@pytest.mark.parametrize(
    ("device", "teacher"), [("cpu", ("litert", "cpu")), ("cuda", ("torch", "cuda"))]
)
def test_bench_serve_on_an_accelerator_labels_there_too(device, teacher, monkeypatch, tmp_path):
    from cloud_trainer.tools import bench_serve

    seen = {}

    def fake_bench_serve(video, *, devices, duration_s, config, sweep):
        seen["config"] = config
        return {"message_loss": 0}

    monkeypatch.setattr(bench_serve, "bench_serve", fake_bench_serve)
    argv = ["bench-serve", "--devices", "1", "--video", "v.avi", "--device", device]
    assert main([*argv, "--results-dir", str(tmp_path)]) == 0
    config = seen["config"]
    assert config.training.device == device
    assert (config.teacher.kind, config.teacher.device) == teacher
