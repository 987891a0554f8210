"""The edge benchmark command produces its JSON and its result file (small settings: the
numbers themselves are measured by running it, not asserted here)."""

import json

import pytest

from edge_runtime.cli import main

STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMS_BENCH_RESULTS", str(tmp_path))
    return tmp_path


def _run(capsys, *args):
    assert main(["--log-level", "WARNING", "bench", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_throughput_bench_compares_with_a_bare_loop(shared_dir, results_dir, capsys):
    out = _run(
        capsys,
        "--model",
        str(shared_dir / STUDENT),
        "--source",
        str(shared_dir / "videos/vtest.avi"),
        "--frames",
        "24",
        "--rounds",
        "1",
    )
    for key in (
        "fps_runtime",
        "fps_bare",
        "ratio",
        "latency_p50_ms",
        "latency_p95_ms",
        "uplink_kbps",
    ):
        assert out[key] > 0, key
    assert out["ratio"] == pytest.approx(out["fps_runtime"] / out["fps_bare"], rel=1e-6)
    stages = out["stages_ms"]  # one round: its frame times are the fps' inverses
    assert stages["frame"] == pytest.approx(1000 / out["fps_runtime"], rel=1e-6)
    assert stages["bare_frame"] == pytest.approx(1000 / out["fps_bare"], rel=1e-6)
    loop, beside = stages["loop"], stages["beside_cpu"]
    assert set(loop) == {"wait", "late_scale", "swap", "inference", "sample", "sinks", "other"}
    assert all(ms >= 0 for ms in [*loop.values(), *beside.values()])
    named = sum(loop.values()) - loop["other"]  # the stages the frame loop times
    assert 0 < loop["inference"] < named <= stages["frame"]
    assert sum(loop.values()) == pytest.approx(stages["frame"])  # all of a frame's time
    assert beside["scale"] + loop["late_scale"] > 0 and beside["encode"] > 0
    saved = json.loads(next(results_dir.glob("edge-bench-*.json")).read_text())
    assert saved["results"]["ratio"] == out["ratio"]
    assert saved["machine"]["cpu_count"] and saved["command"] and saved["date"]


def test_throughput_bench_measures_the_knob_steps_against_the_plain_runtime(
    shared_dir, results_dir, capsys
):
    out = _run(
        capsys,
        *("--model", str(shared_dir / STUDENT), "--source", str(shared_dir / "videos/vtest.avi")),
        *("--frames", "60", "--rounds", "1", "--oneadapt-every", "0.2"),
    )
    assert out["oneadapt_steps"] >= 1 and out["oneadapt_every_s"] == 0.2
    assert out["oneadapt_ratio"] == pytest.approx(
        out["fps_runtime_oneadapt"] / out["fps_runtime"], rel=1e-6
    )
    assert "scene_cut_ratio" not in out


def test_throughput_bench_measures_the_scene_cut_detector(shared_dir, results_dir, capsys):
    """The detector looks at every frame: its time shows in the sampler's stage; vtest.avi has
    no cut."""
    out = _run(
        capsys,
        *("--model", str(shared_dir / STUDENT), "--source", str(shared_dir / "videos/vtest.avi")),
        *("--frames", "40", "--rounds", "1", "--scene-cuts"),
    )
    assert out["scene_cuts"] == 0 and "oneadapt_ratio" not in out
    assert out["scene_cut_ratio"] == pytest.approx(
        out["fps_runtime_scene_cut"] / out["fps_runtime"], rel=1e-6
    )
    assert out["scene_cut_sample_ms"] > out["stages_ms"]["loop"]["sample"]


def test_swap_bench_applies_real_updates_while_paced(shared_dir, results_dir, capsys):
    out = _run(
        capsys,
        "--model",
        str(shared_dir / STUDENT),
        "--source",
        str(shared_dir / "videos/vtest.avi"),
        "--swap-every",
        "1",
        "--fps",
        "10",
        "--duration",
        "3.5",
        "--rounds",
        "1",
    )
    assert out["swaps"] >= 2
    assert len(out["swap_apply_ms"]) == out["swaps"]
    assert out["median_frame_gap_ms"] == pytest.approx(100, rel=0.2)
    for prefix in ("", "baseline_"):
        gaps = [out[f"{prefix}{name}_frame_gap_ms"] for name in ("median", "p99", "max")]
        assert gaps == sorted(gaps) and out[f"{prefix}dropped_frames"] >= 0
    assert out["p99_gap_ratio"] == pytest.approx(
        out["p99_frame_gap_ms"] / out["baseline_p99_frame_gap_ms"], rel=1e-6
    )
    assert next(results_dir.glob("edge-swap-*.json"))


@pytest.mark.parametrize("flag", ["--model", "--teacher"])
def test_a_missing_model_file_is_one_line(shared_dir, tmp_path, capsys, flag):
    model = str(shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite")
    given = {"--model": model, "--teacher": model, flag: str(tmp_path / "nope.tflite")}
    args = ["--model", given["--model"], "--teacher", given["--teacher"]]
    video = str(shared_dir / "videos/vtest.avi")
    assert main(["bench", *args, "--source", video, "--opa-budget-ms", "20"]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {flag} {tmp_path / 'nope.tflite'}: no such file (give the .tflite's path)\n"
    )
