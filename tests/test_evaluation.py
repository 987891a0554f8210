"""cloud-trainer evaluate: the virtual clock, scoring, tracking, JIT's rule, the replay, the
device's patching, and the quick preset end to end on a short clip."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cloud_trainer.evaluation.clock import Link, Trainer
from cloud_trainer.evaluation.config import JitSettings, TrackingSettings
from cloud_trainer.evaluation.schemes.jit import next_stride, train_until
from cloud_trainer.evaluation.schemes.remote_tracking import track
from cloud_trainer.evaluation.scoring import iou_counts, miou_from_counts
from shared_schema.metrics import miou


def test_update_arrives_after_interval_end_plus_transfer():
    link = Link(mbps=1.0)
    # 125 kB at 1 Mbps: one second on the wire after the T_update interval ended at 10 s
    assert link.send(10.0, 125_000) == pytest.approx(11.0)
    # the next update is ready at 10.5 s but waits for the link
    assert link.send(10.5, 12_500) == pytest.approx(11.1)
    assert link.send(20.0, 0) == pytest.approx(20.0)


def test_charged_compute_delays_and_queues_the_trainer():
    assert Trainer(charge=0.0).finish(10.0, compute_s=20.0) == 10.0  # the paper's emulation
    trainer = Trainer(charge=0.5)
    assert trainer.finish(10.0, compute_s=20.0) == pytest.approx(20.0)
    assert trainer.finish(12.0, compute_s=4.0) == pytest.approx(22.0)  # busy until 20 s


@pytest.mark.parametrize("classes", [(0,), (0, 1, 2), (0, 5, 7, 20), (3, 4)])
def test_miou_from_counts_matches_metrics_miou(classes):
    rng = np.random.default_rng(0)
    prediction = rng.choice([0, 1, 2, 7], size=(40, 50))
    target = rng.choice([0, 1, 5, 7], size=(40, 50))
    counts = iou_counts(prediction, target, 21)
    assert miou_from_counts(counts, classes) == pytest.approx(miou(prediction, target, classes))
    batch = miou_from_counts(np.stack([counts, counts]), classes)
    assert batch == pytest.approx([miou(prediction, target, classes)] * 2)


def test_farneback_tracks_a_shifted_label_map():
    rng = np.random.default_rng(1)
    texture = (rng.random((64, 64)) * 255).astype(np.uint8)
    previous = np.kron(texture, np.ones((8, 8), np.uint8))[:513, :513]  # 8 px blobs
    previous = np.pad(previous, ((0, 513 - previous.shape[0]), (0, 513 - previous.shape[1])))
    labels = np.zeros((513, 513), np.uint8)
    labels[150:350, 100:300] = 15
    dy, dx = 6, 9
    current = np.roll(previous, (dy, dx), axis=(0, 1))
    expected = np.roll(labels, (dy, dx), axis=(0, 1))
    tracked = track(labels, previous, current, TrackingSettings())
    assert miou(tracked, expected, (15,)) > 0.95
    assert miou(labels, expected, (15,)) < 0.9  # not tracking would be visibly worse


def test_jit_trains_until_the_threshold_or_the_step_limit():
    accuracies = iter([0.5, 0.6, 0.8, 0.9])
    steps = []
    taken, reached = train_until(0.75, 8, lambda: next(accuracies), lambda: steps.append(1))
    assert (taken, reached, len(steps)) == (2, 0.8, 2)

    taken, reached = train_until(0.75, 3, lambda: 0.1, lambda: None)
    assert (taken, reached) == (3, 0.1)
    assert train_until(0.75, 8, lambda: 0.9, pytest.fail) == (0, 0.9)  # no training, no update


def test_jit_stride_grows_when_met_and_shrinks_when_not():
    s = JitSettings()
    assert next_stride(s.min_stride_s, True, s) == pytest.approx(2 * s.min_stride_s)
    assert next_stride(s.max_stride_s, True, s) == s.max_stride_s
    assert next_stride(4 * s.min_stride_s, False, s) == pytest.approx(2 * s.min_stride_s)
    assert next_stride(s.min_stride_s, False, s) == s.min_stride_s  # one update per 266 ms


def test_concatenated_stream_runs_on_one_clock(shared_dir):
    from cloud_trainer.evaluation.stream import ReplayStream

    videos = [shared_dir / "videos/vtest.avi", shared_dir / "videos/bottle-detection.mp4"]
    stream = ReplayStream(videos, size=(513, 513), clip_s=1.0, eval_stride=4)
    frames = list(stream)
    t = np.array([f.t for f in frames])
    assert np.all(np.diff(t) > 0)
    first_bottle = next(f for f in frames if f.video == 1)
    assert first_bottle.t == pytest.approx(1.0)  # 10 vtest frames at 10 fps, then the next video
    assert sum(f.video == 1 for f in frames) == 30  # 30 fps
    assert [f.index for f in frames if f.evaluated] == list(range(0, len(frames), 4))
    assert stream.end_s == pytest.approx(2.0, abs=0.01)  # bottle runs at 29.97 fps
    assert frames[-1].rgb.shape == (513, 513, 3)
    looped = ReplayStream([videos[1], videos[0], videos[1]], size=(65, 65))
    assert looped.names == ["bottle-detection.mp4", "vtest.avi", "bottle-detection.mp4 (2)"]


def test_a_rotation_replays_the_next_segment_of_each_video_in_turn(shared_dir):
    from cloud_trainer.evaluation.stream import ReplayStream, rotation

    videos = [shared_dir / "videos/car-detection.mp4", shared_dir / "videos/vtest.avi"]
    parts = rotation(videos, segment_s=0.5, rounds=2, first=1)
    assert [(p.path.name, p.start_s, p.duration_s) for p in parts] == [
        ("vtest.avi", 0.0, 0.5), ("car-detection.mp4", 0.0, 0.5),
        ("vtest.avi", 0.5, 0.5), ("car-detection.mp4", 0.5, 0.5),
    ]  # fmt: skip
    stream = ReplayStream([], size=(65, 65), parts=parts)
    frames = list(stream)
    assert stream.names == ["vtest.avi", "car-detection.mp4", "vtest.avi@0.5s",
                            "car-detection.mp4@0.5s"]  # fmt: skip
    times = [f.t for f in frames]
    assert times == sorted(times) and len(set(times)) == len(times)  # one clock across parts
    third = [f for f in frames if f.video == 2]
    assert len(third) == 5 and third[0].frame.timestamp == pytest.approx(0.5)  # vtest: 10 fps
    assert [facts(f) for f in stream.replay_video(third[0])] == [facts(f) for f in third]
    # a video shorter than the rounds ask for starts over
    looped = rotation(videos[:1], segment_s=20.0, rounds=3)  # 30.2 s: 20 s, then 10.2 s
    assert [(p.start_s, round(p.duration_s, 1)) for p in looped] == [(0, 20), (20, 10.2), (0, 20)]


def facts(f):
    return (f.index, f.video, f.t, f.evaluated, f.rgb.tobytes())


def test_a_video_replayed_gives_the_frames_the_stream_gave(shared_dir):
    from cloud_trainer.evaluation.stream import ReplayStream

    videos = [shared_dir / "videos/vtest.avi", shared_dir / "videos/bottle-detection.mp4"]
    stream = ReplayStream(videos, size=(65, 65), clip_s=0.5, eval_stride=3)
    frames = list(stream)
    first = next(f for f in frames if f.video == 1)
    again = list(stream.replay_video(first))
    assert [facts(f) for f in again] == [facts(f) for f in frames if f.video == 1]


def test_device_applies_an_update_from_its_arrival_time(shared_dir, tmp_path):
    import torch

    from cloud_trainer.evaluation.cache import LabelCache
    from cloud_trainer.evaluation.device import DeviceModel
    from cloud_trainer.mirror import ModelMirror
    from cloud_trainer.student import import_tflite
    from shared_schema.messages import UpdateFormat

    initial = (shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite").read_bytes()
    pretrained = LabelCache(tmp_path, initial, lambda rgb: np.zeros(rgb.shape[:3], np.uint8))
    device = DeviceModel(initial, pretrained, threads=1)
    student = import_tflite(initial)
    with torch.no_grad():
        last = list(student.parameters())[-1]  # the classifier's bias: moves the labels
        last[1:] -= 100.0
    update = ModelMirror(initial, device_id="d").advance(student, UpdateFormat.QDELTA)
    device.schedule(5.0, update.msg, update.body)
    picture = np.full((513, 513, 3), 128, np.uint8)
    device.advance_to(4.9)
    assert device.data == initial and device.labels(picture).max() == 0  # the cached labels
    assert pretrained.hits == 0 and pretrained.misses == 1
    device.advance_to(5.0)
    assert device.data != initial and device.applied == [5.0]
    assert np.all(device.labels(picture) == 0)  # everything but background pushed down
    device.close()


@pytest.mark.slow
def test_quick_preset_end_to_end(shared_dir, tmp_path):
    from cloud_trainer.evaluation.command import add_evaluate_parser
    from edge_runtime.cli import command_parser, run_command

    parser, sub = command_parser("cloud-trainer", "test")
    add_evaluate_parser(sub)
    out = tmp_path / "out"
    argv = [
        "--log-level=WARNING",
        "evaluate",
        "--video",
        str(shared_dir / "videos/vtest.avi"),
        "--preset",
        "quick",
        "--clip",
        "20",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--variant",  # the float16 device path: a float TFLite, fp16 updates
        "f16:precision=float16,update_format=ams-fp16",
        "--variant",  # OneAdapt on the uplink: the knobs stepped on each DNNGrad
        "oa:oneadapt.enabled=true",
    ]
    assert run_command(parser, argv) == 0
    for name in ("results.md", "miou_over_time.png", "bandwidth.png", "miou_gain_cdf.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    schemes = results["schemes"]
    assert list(schemes) == ["no_custom", "one_time", "remote_tracking", "jit", "ams", "oracle"]
    for summary in schemes.values():
        for key in ("miou", "per_video", "uplink_kbps", "downlink_kbps", "updates",
                    "bytes_per_update", "trainer_seconds"):  # fmt: skip
            assert key in summary
        assert 0.0 <= summary["miou"] <= 1.0
        assert list(summary["per_video"]) == ["vtest.avi"]
    assert schemes["no_custom"]["uplink_kbps"] == schemes["no_custom"]["downlink_kbps"] == 0
    assert schemes["ams"]["updates"] >= 1 and schemes["ams"]["uplink_kbps"] > 0
    assert schemes["ams"]["miou"] > schemes["no_custom"]["miou"]
    # the oracle trained on every scored frame it is scored on: the upper bound
    assert schemes["oracle"]["miou"] > schemes["ams"]["miou"]
    assert schemes["oracle"]["share_of_oracle_gain"] == pytest.approx(1.0)
    assert 0.0 < schemes["ams"]["share_of_oracle_gain"] < 1.0
    f16 = results["variants"]["f16"]
    assert f16["updates"] >= 1 and f16["miou"] > schemes["no_custom"]["miou"] - 0.02
    # fp16 values of 5 % of the weights cost more bytes than qdelta's changed int8 steps
    assert f16["downlink_kbps"] == pytest.approx(f16["ams_fp16_kbps"])
    assert f16["downlink_kbps"] > 2 * schemes["ams"]["downlink_kbps"]
    oa, fixed = results["variants"]["oa"], schemes["ams"]
    assert fixed["gradient_kbps"] == 0 < oa["gradient_kbps"] < 2.0
    steps = json.loads((out / "variants/oa.json").read_text())["extra"]["knobs"]
    assert steps and all(18.0 <= crf <= 45.0 and width is None for _, crf, width in steps)
    assert oa["uplink_kbps"] != fixed["uplink_kbps"]  # constant quality, not 200 kbps
    assert results["config"]["preset"] == "quick"
    assert results["config"]["charge_compute"] == 0.0
    assert "| this stream | mIoU (%) |" in (out / "results.md").read_text()


def _fake_run(name, signature, quality, updates=()):
    from cloud_trainer.evaluation.record import SchemeRun

    run = SchemeRun(name, signature, duration_s=20.0)
    for i in range(20):
        target = np.zeros((8, 8), np.int64)
        target[:4] = 15
        prediction = target.copy()
        prediction[: 4 - quality] = 0  # fewer person rows found: lower IoU
        run.add_frame(float(i), i // 10, iou_counts(prediction, target, 21))
    run.uplink = [(5.0, 1000)]
    run.downlink = [(t, 500) for t in updates]
    run.updates = list(updates)
    return run


def test_report_merges_saved_runs_and_lays_out_tables(tmp_path):
    from cloud_trainer.evaluation.config import preset
    from cloud_trainer.evaluation.report import FILES, write_report
    from cloud_trainer.evaluation.runner import ABLATION, RUNS, StreamInfo

    signature = {"videos": ["a.mp4", "b.mp4"], "clip_s": None, "eval_stride": 1}
    info = StreamInfo(signature, (0, 15), 20.0, ["a.mp4", "b.mp4"], (9, 17))
    _fake_run("no_custom", signature, 1).save(tmp_path / RUNS)
    _fake_run("ams", signature, 3, updates=(10.5, 15.0)).save(tmp_path / RUNS)  # a later run
    _fake_run("jit", {**signature, "eval_stride": 2}, 4).save(tmp_path / RUNS)  # other frames
    _fake_run("full", signature, 3).save(tmp_path / ABLATION)
    _fake_run("gradient_5", signature, 2, updates=(10.0,)).save(tmp_path / ABLATION)
    config = preset("quick", tmp_path / "student.tflite", tmp_path / "teacher.tflite")

    results = write_report(tmp_path, config, info)
    assert all((tmp_path / name).is_file() for name in FILES)
    assert list(results["schemes"]) == ["no_custom", "ams"]  # jit scored other frames
    ams = results["schemes"]["ams"]
    assert ams["miou"] > results["schemes"]["no_custom"]["miou"]
    assert ams["updates"] == 2 and ams["bytes_per_update"] == 500
    assert ams["downlink_kbps"] == pytest.approx(1000 * 8 / 20 / 1000)
    assert set(ams["per_video"]) == {"a.mp4", "b.mp4"}
    assert ams["frames_better_than_no_custom"] == 1.0
    markdown = (tmp_path / "results.md").read_text()
    assert "| Outdoor Scenes (paper) | mIoU (%) | 63.68 | 74.26 |" in markdown
    assert "| gradient | – (+0.13) | – (-0.13) |" in markdown  # Table 3, 20 % and 10 % not run
    assert "Farneback at 9x17 " in markdown  # the geometry of the stream's model
    assert json.loads((tmp_path / "results.json").read_text())["ablation"]["gradient_5"]


def test_report_shows_the_oracles_headroom_the_variants_and_the_targets(tmp_path):
    from cloud_trainer.evaluation.config import preset
    from cloud_trainer.evaluation.report import write_report
    from cloud_trainer.evaluation.runner import RUNS, VARIANTS, StreamInfo

    signature = {"videos": ["a.mp4", "b.mp4"], "clip_s": None, "eval_stride": 1}
    info = StreamInfo(signature, (0, 15), 20.0, ["a.mp4", "b.mp4"], (9, 17))
    _fake_run("no_custom", signature, 1).save(tmp_path / RUNS)
    _fake_run("ams", signature, 2, updates=(10.0,)).save(tmp_path / RUNS)
    _fake_run("oracle", signature, 4).save(tmp_path / RUNS)
    variant = _fake_run("lr3e-4", signature, 3, updates=(10.0,))
    variant.extra = {"overrides": {"training.lr": 0.0003}, "phases_gated": 2, "rebases": 1,
                     "rebased_at": [10.0]}  # fmt: skip
    variant.save(tmp_path / VARIANTS)
    _fake_run("elsewhere", {**signature, "eval_stride": 2}, 3).save(tmp_path / VARIANTS)
    config = preset("quick", tmp_path / "student.tflite", tmp_path / "teacher.tflite")

    results = write_report(tmp_path, config, info)
    miou = {q: miou_from_counts(_fake_run("x", signature, q).frame_counts[0], (0, 15))
            for q in (1, 2, 3, 4)}  # fmt: skip
    share = (miou[2] - miou[1]) / (miou[4] - miou[1])
    assert results["schemes"]["ams"]["share_of_oracle_gain"] == pytest.approx(share)
    assert list(results["variants"]) == ["lr3e-4"]  # "elsewhere" scored other frames
    lr = results["variants"]["lr3e-4"]
    assert lr["share_of_oracle_gain"] == pytest.approx((miou[3] - miou[1]) / (miou[4] - miou[1]))
    assert lr["frames_better_than_no_custom"] == 1.0
    assert lr["rebases"] == 1 and "rebased_at" not in lr  # a series for the plot, not a figure
    markdown = (tmp_path / "results.md").read_text()
    assert "| Outdoor Scenes (paper) | mIoU (%) | 63.68 | 74.26 | – |" in markdown
    gain = 100 * (miou[3] - miou[1])
    assert f"| lr3e-4 | training.lr=0.0003 | {100 * miou[3]:.2f} | {gain:+.2f} |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| lr3e-4 |"))
    assert row.endswith("| 2 | 1 |")  # gated phases, rebases
    assert "| mIoU ≥ No Customization + 5 points |" in markdown
    assert "| better than No Customization on ≥ 80 % of frames | 100.0% | yes |" in markdown


def test_variants_change_named_ams_settings_and_refuse_anything_else():
    from cloud_trainer.evaluation.config import AmsSettings, Variant
    from shared_schema.config_files import ConfigFileError

    base = AmsSettings()
    v = Variant.parse(
        "crop:training.resolution=[257,257],gate.enabled=false,segment_kbps=100", base
    )
    assert v.name == "crop"
    assert v.settings.training.resolution == (257, 257) and not v.settings.gate.enabled
    assert v.settings.segment_kbps == 100 and v.settings.training.lr == base.training.lr
    assert v.overrides == {
        "training.resolution": [257, 257], "gate.enabled": False, "segment_kbps": 100
    }  # fmt: skip
    assert Variant.parse("sel:training.selection=random", base).settings.training.selection == (
        "random"
    )
    for text, why in [
        ("Bad Name:training.lr=1", "NAME:KEY=VALUE"),
        ("noeq:training.lr", "'training.lr' is not KEY=VALUE"),
        ("typo:training.lrr=1", "training.lrr: no such setting"),
        ("deep:training.lr.x=1", "training.lr.x: no such setting"),
        ("neg:training.lr=-1", "--variant neg:training.lr=-1: training.lr: Input should be"),
    ]:
        with pytest.raises(ConfigFileError, match=re.escape(why)):
            Variant.parse(text, base)


def test_the_models_must_be_readable_and_agree_on_geometry(shared_dir, tmp_path):
    from cloud_trainer.evaluation.config import Geometry
    from shared_schema.config_files import ConfigFileError

    models = shared_dir / "models/coral"
    student = models / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
    teacher = models / "deeplabv3_mnv2_pascal_quant.tflite"
    assert Geometry.of(student, teacher) == Geometry((513, 513), 21)
    cityscapes = models / "deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite"
    with pytest.raises(ConfigFileError, match=r"scores 19 classes.*21: pass a --student"):
        Geometry.of(cityscapes, teacher)
    with pytest.raises(ConfigFileError, match=r"cannot read.*check --student"):
        Geometry.of(tmp_path / "absent.tflite", teacher)
    (tmp_path / "text.tflite").write_text("not a model")
    with pytest.raises(ConfigFileError, match=r"--teacher takes a quantized \.tflite"):
        Geometry.of(student, tmp_path / "text.tflite")


def test_the_float_oracle_scores_the_float_network_not_the_int8_file(shared_dir, tmp_path):
    from cloud_trainer.evaluation.config import preset
    from cloud_trainer.evaluation.runner import Evaluation
    from cloud_trainer.evaluation.schemes.oracle import FloatOracle
    from cloud_trainer.student import import_tflite

    models = shared_dir / "models/coral"
    config = preset("quick", models / "deeplabv3_mnv2_dm05_pascal_quant.tflite",
                    models / "deeplabv3_mnv2_pascal_quant.tflite")  # fmt: skip
    # one step at a negligible rate: the oracle's network is the pretrained one, in float
    config = config.model_copy(update={
        "stream": config.stream.model_copy(update={"clip_s": 0.4, "eval_stride": 2}),
        "oracle": config.oracle.model_copy(update={"steps": 1, "lr": 1e-12}),
    })  # fmt: skip
    evaluation = Evaluation(config, [shared_dir / "videos/vtest.avi"], tmp_path, tmp_path / "c")
    run = evaluation.run("oracle_float", FloatOracle, tmp_path / "runs")
    student = import_tflite(config.student_model)
    student.fake_quant = False
    frames = [f for f in evaluation.stream if f.evaluated]
    assert len(run.frame_counts) == len(frames) == 2
    for frame, counts in zip(frames, run.frame_counts, strict=True):
        target = evaluation.teacher_labels(frame.rgb[None])[0]
        float_labels = student.labels(frame.rgb[None])[0].numpy()
        assert np.array_equal(counts, iou_counts(float_labels, target, 21))
        int8 = iou_counts(evaluation.pretrained_labels(frame.rgb[None])[0], target, 21)
        assert not np.array_equal(counts, int8)  # the float network labels differently


def test_evaluate_runs_on_a_stream_of_recurring_scenes(shared_dir, tmp_path):
    from cloud_trainer.evaluation.command import add_evaluate_parser
    from edge_runtime.cli import command_parser, run_command

    parser, sub = command_parser("cloud-trainer", "test")
    add_evaluate_parser(sub)
    out = tmp_path / "out"
    videos = ["car-detection.mp4", "vtest.avi"]
    argv = ["--log-level=WARNING", "evaluate", "--preset", "quick", "--schemes", "no_custom",
            "--rotation", "1", "--rounds", "2", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"),
            "--variant", "cut:scene_cut.enabled=true"]  # fmt: skip
    for video in videos:
        argv += ["--video", str(shared_dir / "videos" / video)]
    assert run_command(parser, argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["schemes"]["no_custom"]["per_video"]) == [
        "car-detection.mp4", "vtest.avi", "car-detection.mp4@1s", "vtest.avi@1s"]  # fmt: skip
    assert results["config"]["stream"]["rotation_s"] == 1.0
    # the device's cut detector: at each change of scene but the one within hold_s (2 s)
    cuts = json.loads((out / "variants/cut.json").read_text())["extra"]["scene_cut_at"]
    assert cuts == pytest.approx([1.0, 3.0], abs=0.1)
    assert results["variants"]["cut"]["scene_cuts"] == 2


def test_time_to_accuracy_is_when_the_smoothed_miou_reaches_the_scenes_steady_level():
    from cloud_trainer.evaluation.fleet import time_to_accuracy

    t = np.arange(0.0, 30.0, 0.5)
    miou = np.where(t < 10.0, 0.6, 0.8)  # learnt at 10 s; steady at 0.8 after it
    assert time_to_accuracy(t, miou) == pytest.approx(12.0)  # its last 2 s are all learnt
    assert time_to_accuracy(t, np.full(t.shape, 0.7)) == 0.0  # at its level from the start
    assert np.isnan(time_to_accuracy(np.zeros(0), np.zeros(0)))
    # against another run's level: reached at 12 s, or never (the scene's length)
    assert time_to_accuracy(t, miou, level=0.8) == pytest.approx(12.0)
    assert time_to_accuracy(t, miou, level=0.9) == pytest.approx(t[-1])


def test_time_to_gain_cancels_what_the_frames_hold_and_keeps_the_models_progress():
    """One device: scene A, scene B, A again. Every scheme's frames get harder then easier
    together (what they show); on the return the fast learner is 10 points above No
    Customization from 2 s in, the slow one from 6 s: time to gain tells them apart by
    their progress, No Customization never gains (the scene's length)."""
    from pathlib import Path

    from cloud_trainer.evaluation.fleet import FleetRun, summarise
    from cloud_trainer.evaluation.record import SchemeRun
    from cloud_trainer.evaluation.stream import ReplayStream, VideoPart

    parts = [VideoPart(Path(f"{v}.mp4"), 10.0, start) for v, start in
             (("a", 0.0), ("b", 0.0), ("a", 10.0))]  # fmt: skip
    stream = ReplayStream([], (8, 8), parts=parts)
    t = np.arange(0.0, 30.0, 0.5)
    content = np.where(t % 10 < 5, 0.6, 0.9)
    into = t - 20.0  # seconds into the return

    def run(name, gain):
        scheme = SchemeRun(name, {})
        for x, score in zip(t, content + gain, strict=True):
            scheme.add_frame(x, int(x // 10), np.array([[round(1000 * score)], [1000]]))
        scheme.duration_s = 30.0
        return FleetRun(name, [scheme], [0.0], [0], [[]], [0])

    runs = {"no_custom": run("no_custom", 0.0 * t),
            "fast": run("fast", np.where(into >= 2.0, 0.1, 0.0)),
            "slow": run("slow", np.where(into >= 6.0, 0.1, 0.0))}  # fmt: skip
    summary = summarise(runs, [stream], (0,))
    fast, slow, nc = summary["fast"], summary["slow"], summary["no_custom"]
    # when its last 2 s have all gained: 2 s after the gain began
    assert fast["time_to_gain_return_s"] == pytest.approx(4.0)
    assert slow["time_to_gain_return_s"] == pytest.approx(8.0)
    assert nc["time_to_gain_return_s"] == pytest.approx(9.5)  # never: the scene's last frame
    # what the frames hold: the raw time waits for the easy half for all of them alike
    assert fast["time_to_accuracy_return_s"] == pytest.approx(7.0)
    assert fast["time_to_gain_first_s"] == 0.0  # no run gains on a first visit
    # scene by scene: the mean above is the one return's
    assert [(x["video"], x["return"]) for x in fast["scenes"]] == [
        ("a.mp4", False), ("b.mp4", False), ("a.mp4", True)]  # fmt: skip
    assert fast["scenes"][2]["to_gain_s"] == pytest.approx(4.0)
    assert fast["scenes"][2]["to_accuracy_s"] == pytest.approx(7.0)
    # its mean: half easy, half hard frames, 10 points above No Customization for 8 s of 10
    assert fast["scenes"][2]["miou"] == pytest.approx(0.75 + 0.08)
    assert fast["scenes"][2]["gain"] == pytest.approx(0.08)
    assert nc["scenes"][2]["gain"] == 0.0


def test_only_recl_and_ideal_reuse_take_the_marginal_gain_scheduler():
    """AMS and AMS + zoo share the trainer in turn, as the issue's baselines do."""
    from cloud_trainer.evaluation.config import AmsSettings
    from cloud_trainer.evaluation.fleet import scheme_settings

    ams = AmsSettings()
    recl = {name: scheme_settings(ams, name).recl
            for name in ("no_custom", "ams", "ams_zoo", "recl", "ideal_reuse")}  # fmt: skip
    assert {n: (r.enabled, r.scheduler) for n, r in recl.items()} == {
        "no_custom": (False, "round-robin"),
        "ams": (False, "round-robin"),
        "ams_zoo": (True, "round-robin"),
        "recl": (True, "marginal-gain"),
        "ideal_reuse": (True, "marginal-gain"),
    }
    assert recl["ideal_reuse"].top_k == ams.recl.capacity and recl["ideal_reuse"].margin == 0.0
    assert recl["recl"].top_k == ams.recl.top_k and recl["recl"].margin == ams.recl.margin


def test_a_fleet_shares_one_trainer_budget_between_its_devices(shared_dir, tmp_path):
    from cloud_trainer.evaluation.command import add_evaluate_parser
    from edge_runtime.cli import command_parser, run_command

    parser, sub = command_parser("cloud-trainer", "test")
    add_evaluate_parser(sub)
    out = tmp_path / "out"
    argv = ["--log-level=WARNING", "evaluate", "--preset", "quick", "--fleet", "2",
            "--budget", "2", "--step-s", "0.25", "--rotation", "3", "--rounds", "2",
            "--schemes", "no_custom,ams,recl,ideal_reuse", "--out", str(out),
            "--variant", "cuts:scene_cut.enabled=true",
            "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    for video in ("car-detection.mp4", "vtest.avi"):
        argv += ["--video", str(shared_dir / "videos" / video)]
    assert run_command(parser, argv) == 0
    results = json.loads((out / "fleet.json").read_text())
    assert results["fleet"] == {"devices": 2, "budget": 2.0, "step_s": 0.25}
    assert {"command", "date", "commit", "machine"} <= set(results)
    # one --variant sets every scheme's AMS settings: the devices see the cuts between videos
    assert results["variant"] == {"name": "cuts", "overrides": {"scene_cut.enabled": True}}
    ams, recl = results["schemes"]["ams"], results["schemes"]["recl"]
    for summary in (ams, recl):
        assert len(summary["per_device"]) == 2 and 0 < summary["miou"] <= 1
        # every phase costs K steps of 0.25 s of a trainer that has 2 s of them per second
        assert summary["training_s"] == [p * 16 * 0.25 for p in summary["phases"]]
        # 2 devices × 2 rounds × 2 videos × 3 s: 12 s each, 24 s of training at most, and
        # the phase the last instant starts
        assert sum(summary["training_s"]) <= 2 * 12.0 + 16 * 0.25
        assert summary["time_to_accuracy_return_s"] is not None
        assert summary["time_to_gain_return_s"] is not None  # beside No Customization's
        assert all(cuts >= 2 for cuts in summary["scene_cuts"])  # at 3, 6 and 9 s
    assert all(p >= 1 for p in ams["phases"]) and ams["downlink_kbps"] > 0
    assert recl["zoo"]["selections"] >= 1 and "ams" not in results["schemes"]["recl"]
    assert len(recl["switches"]) == 2 and sum(recl["switches"]) == recl["zoo"]["switches"]
    # at no margin the check moves a device at a scene change: an update of its own
    ideal = results["schemes"]["ideal_reuse"]
    assert sum(ideal["switches"]) >= 1 and ideal["bytes_per_switch"] > 0
    assert "| recl |" in (out / "fleet.md").read_text()
    assert (out / "fleet.png").stat().st_size > 10_000


def test_a_fleet_takes_one_variant_for_all_its_schemes(shared_dir, tmp_path):
    from cloud_trainer.evaluation.command import add_evaluate_parser
    from edge_runtime.cli import command_parser, run_command

    parser, sub = command_parser("cloud-trainer", "test")
    add_evaluate_parser(sub)
    argv = ["evaluate", "--fleet", "2", "--variant", "a:scene_cut.enabled=true", "--variant",
            "b:training.lr=0.001", "--video", str(shared_dir / "videos" / "vtest.avi"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit, match="--variant: with --fleet give one"):
        run_command(parser, argv)
    assert not (tmp_path / "out").exists()
