"""The trainer's commands as a user runs them: the demo, import-tflite and bench-updates."""

from __future__ import annotations

import json

import pytest

from cloud_trainer.bench_updates import bench_updates
from cloud_trainer.cli import main
from cloud_trainer.demo import run_demo
from cloud_trainer.training import TrainingConfig

STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
TEACHER = "models/coral/deeplabv3_mnv2_pascal_quant.tflite"


@pytest.mark.slow
@pytest.mark.broker
def test_demo_runs_the_whole_loop_on_a_real_video(shared_dir):
    lines = []
    summary = run_demo(
        shared_dir / "videos/vtest.avi", duration_s=40, report_every_s=5, emit=lines.append
    )
    assert summary["frames"] > 200  # real time at 10 fps, for 40 s
    assert summary["swaps"] >= 1 and summary["model_version"] >= 1
    assert summary["trainer"]["phases"] >= 1 and summary["trainer"]["full_models"] == 0
    assert summary["probed_frames"] >= 10  # a frame every 2 s of video
    for key in ("agreement_updated", "agreement_pretrained"):
        assert 0.0 < summary[key] <= 1.0, key
    assert lines[0].startswith("demo: broker on 127.0.0.1:")
    assert any("agreement with the teacher" in line for line in lines[1:])


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
    from cloud_trainer.bench_serve import bench_serve
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
