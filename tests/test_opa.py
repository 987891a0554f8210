"""OPA's elastic student (seed 004, issue 16): sub-networks of the real Coral student in one
TFLite file, run by LiteRT, sharing one set of weights that one verified update patches."""

from __future__ import annotations

import copy
import json

import flatbuffers
import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from cloud_trainer.cli import main as trainer_main
from cloud_trainer.config import TrainerConfig
from cloud_trainer.opa.config import OpaConfig
from cloud_trainer.opa.elastic import (
    ElasticBuildError,
    ElasticLayout,
    PioneerHead,
    elastic_model,
    pioneer_end,
    residual_blocks,
    skip_order,
)
from cloud_trainer.opa.elastic_student import ElasticStudent
from cloud_trainer.opa.fit import _on_grid, fit_selector, measure, with_selector
from cloud_trainer.opa.head import fit_head
from cloud_trainer.opa.refit import SelectorRefit
from cloud_trainer.opa.train import ElasticTraining, train_elastic
from cloud_trainer.sample_buffer import Sample
from cloud_trainer.session import DeviceView, Session
from cloud_trainer.teacher import load_teacher
from edge_runtime.backends.base import ModelError
from edge_runtime.backends.litert import LiteRtConfig
from edge_runtime.opa import bench as opa_bench
from edge_runtime.opa.engine import OpaEngine
from edge_runtime.opa.estimator import sample_step
from edge_runtime.opa.runner import ElasticRunner, OpaSelection, at_resolution, unloaded_latency
from edge_runtime.opa.selector import SELECTOR_METADATA, Selector, SelectorError, read_selector
from edge_runtime.opa.subnets import ElasticModel, head_key, macs
from edge_runtime.profile import ProfileError, bundled_profile
from edge_runtime.runtime import EdgeRuntime, engine_opener
from edge_runtime.sources import open_source
from shared_schema.envelope import decode, encode, sha256_hex
from shared_schema.messages import Telemetry, Update, UpdateFormat
from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError
from shared_schema.update_formats import qdelta, verify_and_apply
from tests.trainer_helpers import trainer_raw, vtest_segments


@pytest.fixture(scope="module")
def student(shared_dir) -> bytes:
    return (shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite").read_bytes()


@pytest.fixture(scope="module")
def frames(shared_dir) -> list[np.ndarray]:
    with open_source(str(shared_dir / "videos/vtest.avi")) as source:
        return [f.rgb(513, 513) for i, f in zip(range(300), source, strict=False) if i % 60 == 0]


@pytest.fixture(scope="module")
def labels(student, frames) -> list[np.ndarray]:
    engine = LiteRtConfig(threads=2).open(student)
    try:
        return [engine.infer(f) for f in frames]
    finally:
        engine.close()


@pytest.fixture(scope="module")
def head(student, frames, labels) -> PioneerHead:
    return fit_head(student, frames[:3], labels[:3], stride=4)


@pytest.fixture(scope="module")
def elastic(student, head) -> bytes:
    return elastic_model(student, head)


def _resized(rgb: np.ndarray, side: int) -> np.ndarray:
    rows = np.linspace(0, rgb.shape[0] - 1, side).round().astype(int)
    return rgb[rows][:, rows][None]


def _run(interpreter: Interpreter, subnet, rgb: np.ndarray) -> np.ndarray:
    pioneer = interpreter.get_signature_runner(subnet.pioneer.key)
    tail = interpreter.get_signature_runner(subnet.tail.key)
    features = pioneer(image=_resized(rgb, subnet.resolution))["features"]
    return tail(features=features)["labels"][0]


def test_the_students_residual_blocks_and_the_order_they_are_skipped_in(student):
    blocks = residual_blocks(TFLiteFile(student))
    # MobileNetV2 at depth 0.5: stride-1 blocks of 12, 16 (2), 32 (3), 48 (2) and 80 (2) channels.
    assert [b.channels for b in blocks] == [12, 16, 16, 32, 32, 32, 48, 48, 80, 80]
    assert all(b.add - b.first == 3 for b in blocks)  # expand, depthwise, project, ADD
    order = [b.channels for b in skip_order(blocks[1:])]
    assert order == [80, 48, 32, 16, 80, 48, 32, 16, 32]  # the deepest stages lose blocks first
    assert pioneer_end(TFLiteFile(student), 4) == blocks[0]


def test_subgraph_0_is_the_student_and_the_whole_subnet_is_too(student, elastic, frames, labels):
    model = ElasticModel.of(elastic)
    assert [s.name for s in model.subnets][:1] == ["r513_d0"]
    engine = LiteRtConfig(threads=2).open(elastic)
    try:
        assert all(np.array_equal(engine.infer(f), y) for f, y in zip(frames, labels, strict=True))
    finally:
        engine.close()
    interpreter = Interpreter(model_content=elastic, num_threads=2)
    whole = _run(interpreter, model.largest, frames[0])
    assert np.array_equal(whole, labels[0])  # the pioneer and the tail, end to end


def test_every_subnet_runs_and_costs_what_its_graph_says(elastic, frames, labels):
    model = ElasticModel.of(elastic)
    assert len(model.subnets) == 9
    interpreter = Interpreter(model_content=elastic, num_threads=2)
    for subnet in model.subnets:
        out = _run(interpreter, subnet, frames[1])
        side = subnet.resolution
        assert out.shape == (side, side)  # a label map at the sub-network's own resolution
    by_name = {s.name: s for s in model.subnets}
    # Convolutions scale with the pixels: r257 holds about a quarter of r513's.
    ratio = by_name["r257_d0"].macs / by_name["r513_d0"].macs
    assert 0.24 < ratio < 0.28
    assert by_name["r513_d8"].macs < by_name["r513_d4"].macs < by_name["r513_d0"].macs
    assert model.pioneer_macs[513] < 0.2 * by_name["r513_d0"].macs


def test_the_pioneer_head_scores_like_the_student(elastic, frames, labels):
    interpreter = Interpreter(model_content=elastic, num_threads=2)
    pioneer = interpreter.get_signature_runner("opa_pioneer_r513")
    head = interpreter.get_signature_runner(head_key(513))
    scores = head(features=pioneer(image=frames[4][None])["features"])["scores"][0]
    assert scores.shape == (129, 129, 21)
    agreement = (scores.argmax(-1) == labels[4][::4, ::4]).mean()
    assert agreement > 0.9  # a frame the head was not fitted on


def test_one_qdelta_patches_every_subnet_and_verifies(elastic, frames):
    file = TFLiteFile(elastic)
    first = file.trainable[0]  # the first convolution: in every pioneer, so in every subnet
    head = next(t for t in file.trainable if t.name == "opa/head/weights")
    shifted = file.values(first).copy()
    shifted[::3] = np.clip(shifted[::3].astype(int) + 9, 0, 255)
    values = {first.index: shifted, head.index: 255 - file.values(head)}
    result = file.patched(values)
    update = Update(
        base_version=1,
        base_sha256=sha256_hex(elastic),
        new_version=2,
        result_sha256=sha256_hex(result),
    )
    applied = verify_and_apply(update, file, qdelta.encode(file, values))
    assert applied.data == result
    before = Interpreter(model_content=elastic, num_threads=2)
    after = Interpreter(model_content=applied.data, num_threads=2)
    model = ElasticModel.of(elastic)
    old, new = (_run(i, model.largest, frames[2]) for i in (before, after))
    assert (old != new).mean() > 0.001
    for resolution, pioneer in model.pioneers.items():  # every subnet starts from one of these
        image = _resized(frames[2], resolution)
        outputs = []
        for interpreter in (before, after):
            features = interpreter.get_signature_runner(pioneer.key)(image=image)["features"]
            head = interpreter.get_signature_runner(head_key(resolution))
            outputs.append((features, head(features=features)["scores"]))
        (old_features, old_scores), (new_features, new_scores) = outputs
        assert not np.array_equal(old_features, new_features), resolution
        assert not np.array_equal(old_scores, new_scores), resolution


def test_the_elastic_file_patches_the_students_tensors_at_the_same_indices(student, elastic):
    plain, elastic_file = TFLiteFile(student), TFLiteFile(elastic)
    head = [t for t in elastic_file.trainable if t.index not in plain.by_index]
    assert [t.name for t in head] == ["opa/head/weights", "opa/head/bias"]
    for tensor in plain.trainable:
        twin = elastic_file.by_index[tensor.index]
        assert twin.shape == tensor.shape and twin.name == tensor.name
        assert np.array_equal(elastic_file.values(twin), plain.values(tensor))


def test_a_subgraph_reading_a_weight_from_another_buffer_is_refused(elastic):
    model = schema.ModelT.InitFromPackedBuf(elastic, 0)
    weight = TFLiteFile(elastic).trainable[0].index
    copy_buffer = copy.deepcopy(model.buffers[model.subgraphs[1].tensors[weight].buffer])
    model.buffers.append(copy_buffer)
    model.subgraphs[1].tensors[weight].buffer = len(model.buffers) - 1
    builder = flatbuffers.Builder(len(elastic) * 2)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with pytest.raises(TFLiteFormatError, match="one tensor index in every subgraph"):
        TFLiteFile(bytes(builder.Output()))


def test_a_plain_student_declares_no_subnet(student):
    with pytest.raises(TFLiteFormatError, match="no OPA sub-network"):
        ElasticModel.of(student)
    assert macs(TFLiteFile(student), 0) > 800_000_000  # 0.9 GMAC at 513x513, depth 0.5


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (ElasticLayout(resolutions=(300,)), "16k\\+1"),
        (ElasticLayout(resolutions=(529,)), "16k\\+1"),
        (ElasticLayout(depths=(10,)), "residual blocks to skip"),
        (ElasticLayout(pioneer_stride=2), "no residual block at stride 2"),
    ],
)
def test_layouts_the_student_cannot_take_are_refused(student, head, layout, message):
    with pytest.raises(ElasticBuildError, match=message):
        elastic_model(student, head, layout)


def test_a_head_of_the_wrong_shape_or_values_is_refused(student, head):
    with pytest.raises(ElasticBuildError, match="weights"):
        elastic_model(student, PioneerHead(head.weights[:, :5], head.bias, head.scores_range))
    bad = head.weights.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ElasticBuildError, match="finite"):
        elastic_model(student, PioneerHead(bad, head.bias, head.scores_range))


@pytest.fixture(scope="module")
def measured(elastic, frames, labels):
    return measure(ElasticRunner(elastic), frames, labels)


def test_the_torch_twin_runs_every_subnet_as_litert_does(elastic, frames):
    twin = ElasticStudent(elastic).eval()
    runner = ElasticRunner(elastic)
    with torch.no_grad():
        for subnet in twin.model.subnets:
            image = at_resolution(frames[3], subnet.resolution)
            ours = twin.subnet_logits(torch.from_numpy(image[None]), subnet).argmax(1)[0].numpy()
            tail = runner._runner(subnet.tail.key)
            features = runner.features(subnet.resolution, frames[3])
            theirs = tail(features=features)["labels"][0]
            assert (theirs == ours).mean() > 0.999, subnet.name
            assert runner.labels(subnet, features).shape == (513, 513)  # scaled up, nearest
        full = torch.from_numpy(at_resolution(frames[3], twin.model.largest.resolution)[None])
        assert torch.equal(twin.subnet_logits(full, twin.model.largest), twin(full))  # real units
        scores = twin.head_scores(torch.from_numpy(frames[3][None]))[0].permute(1, 2, 0).numpy()
        features = runner.features(513, frames[3])
        assert np.allclose(scores, runner.scores(513, features))
        step = sample_step(scores.shape[0])  # what the estimator reads: a grid of the same
        assert np.allclose(scores[::step, ::step], runner.scores(513, features, sampled=True))


def test_a_sandwich_step_trains_the_shared_weights_and_writes_them_back(elastic, frames, labels):
    trained, losses = train_elastic(
        elastic, frames, labels, ElasticTraining(steps=2, batch_size=1, crop=161, lr=1e-3)
    )
    assert len(losses) == 2 and all(np.isfinite(losses))
    before, after = TFLiteFile(elastic), TFLiteFile(trained)
    changed = [
        t.name
        for t in before.trainable
        if not np.array_equal(before.values(t), after.values(after.by_index[t.index]))
    ]
    assert "opa/head/weights" in changed and len(changed) > 10
    assert len(trained) == len(elastic)  # values rewritten in place: a qdelta carries them
    ElasticModel.of(trained)


def test_the_selection_fits_on_the_frames_and_ships_in_the_file(elastic, measured):
    selector = fit_selector(measured, allowance_s=0.001)
    shipped = with_selector(elastic, selector)
    model = ElasticModel.of(shipped)
    assert read_selector(model) == selector
    assert read_selector(ElasticModel.of(elastic)) is None
    again = with_selector(shipped, selector)
    assert len(again) == len(shipped)  # a refit rewrites its entry, the file does not grow
    # the whole student agrees with itself, whatever the teacher: its mIoU tops the list
    means = {name: np.mean(v) for name, v in measured.miou.items()}
    assert max(means, key=means.get) == "r513_d0" and means["r513_d0"] == 1.0


def test_parameters_that_do_not_fit_the_model_are_refused(elastic, measured):
    selector = fit_selector(measured)
    wrong = selector.model_copy(update={"predictors": {513: selector.predictors[513]}})
    with pytest.raises(SelectorError, match="pioneers"):
        read_selector(ElasticModel.of(with_selector(elastic, wrong)))
    short = selector.model_copy(update={"log_likelihood": ((-1.0,) * 5, (-1.0,) * 5)})
    with pytest.raises(SelectorError, match="classes"):
        read_selector(ElasticModel.of(with_selector(elastic, short)))


def test_opa_switches_subnets_between_frames_without_dropping_one(elastic, measured, frames):
    runner = ElasticRunner(elastic)
    selection = OpaSelection(runner, fit_selector(measured), budget_s=10.0)
    choices = []
    for i, frame in enumerate(frames * 2):
        if i == len(frames):
            selection.budget_s = 1e-6  # nothing fits: the smallest runs
        labels, choice = selection.infer(frame)
        assert labels.shape == (513, 513)
        choices.append(choice)
    assert choices[0].subnet == "r513_d0" and choices[-1].subnet == runner.model.smallest.name
    assert not choices[-1].fits and all(c.fits for c in choices[: len(frames)])
    first, last = choices[: len(frames)], choices[len(frames) :]
    assert all(c.estimate is not None and 0 <= c.estimate <= 1 for c in first)
    assert all(c.estimate is None for c in last)  # no choice to make: no head, no estimator
    assert all(c.actual_s >= c.pioneer_s + c.selection_s for c in choices)


def test_calibrated_costs_never_rank_a_subset_of_ops_above_its_superset(elastic, frames):
    runner = ElasticRunner(elastic)
    subnets, pioneers = unloaded_latency(runner, frames[:2])
    assert set(pioneers) == set(runner.model.pioneers) and all(t > 0 for t in pioneers.values())
    for resolution in runner.model.pioneers:
        same = sorted((s for s in runner.model.subnets if s.resolution == resolution),
                      key=lambda s: s.macs)  # fmt: skip
        times = [subnets[s.name] for s in same]
        assert times == sorted(times) and times[0] > 0


def test_the_bench_compares_every_scheme_at_each_load(shared_dir, elastic, measured, tmp_path):
    model = tmp_path / "elastic.tflite"
    model.write_bytes(with_selector(elastic, fit_selector(measured)))
    teacher = shared_dir / "models/coral/deeplabv3_mnv2_pascal_quant.tflite"
    video = str(shared_dir / "videos/vtest.avi")
    result = opa_bench.opa(model, video, teacher, budget_ms=15.0, loads=(0, 1), frames=3)
    assert result["selector"] == "shipped" and set(result["loads"]) == {"0", "1"}
    for schemes in result["loads"].values():
        assert {"opa", "opa:macs", "static_table", "fixed:r513_d0", "fixed:r257_d8"} <= set(schemes)
        for row in schemes.values():
            assert 0.0 <= row["over_budget"] <= 1.0 and row["mean_ms"] > 0
            assert 0.0 <= row["miou"] <= 1.0
        assert sum(schemes["opa"]["chosen"].values()) == 3
    assert "best_fixed_within_budget" in result["summary"]["0"]


def test_the_summary_sets_opa_against_the_oracle_fixed_choice_and_the_safe_one():
    def row(over: float, miou: float) -> dict:
        return {"over_budget": over, "miou": miou}

    levels = {
        "0": {"fixed:big": row(0.0, 0.8), "fixed:small": row(0.0, 0.6),
              "static_table": row(0.0, 0.8), "opa": row(0.005, 0.79), "opa:macs": row(0, 0.7)},
        "2": {"fixed:big": row(0.5, 0.8), "fixed:small": row(0.01, 0.6),
              "static_table": row(0.5, 0.8), "opa": row(0.01, 0.6), "opa:macs": row(0, 0.6)},
    }  # fmt: skip
    summary = opa_bench._summary(levels)
    # at the heaviest load only 'small' keeps the budget: what a device not knowing its load runs
    assert summary["fixed_for_heaviest_load"] == "fixed:small"
    assert summary["0"]["best_fixed_within_budget"] == "fixed:big"
    assert summary["0"]["opa"]["gain_over_best_fixed"] == pytest.approx(-1.0)
    assert summary["0"]["opa"]["gain_over_fixed_for_heaviest_load"] == pytest.approx(19.0)
    assert summary["2"]["opa"]["gain_over_best_fixed"] == pytest.approx(0.0)
    assert summary["opa_vs_full_unloaded_points"] == pytest.approx(-1.0)


def test_background_load_starts_and_stops_its_processes():
    with opa_bench.background_load(2) as busy:
        assert len(busy) == 2 and all(p.poll() is None for p in busy)
    assert all(p.poll() is not None for p in busy)


def test_a_refused_selector_leaves_opa_on_latency_alone(shared_dir, elastic, tmp_path):
    model = tmp_path / "elastic.tflite"
    bad = Selector(
        log_prior=(-0.7, -0.7),
        log_likelihood=((-1.0,) * 21, (-1.0,) * 21),
        predictors={513: {"r513_d0": (1.0, 0.0)}},
    )
    model.write_bytes(with_selector(elastic, bad))
    teacher = shared_dir / "models/coral/deeplabv3_mnv2_pascal_quant.tflite"
    video = str(shared_dir / "videos/vtest.avi")
    result = opa_bench.opa(model, video, teacher, budget_ms=1000.0, loads=(0,), frames=2)
    assert result["selector"].startswith("refused: ")
    # within a generous budget, the costliest sub-network runs, as with no selector at all
    assert result["loads"]["0"]["opa"]["chosen"] == {"r513_d0": 2}


def test_opa_build_writes_an_elastic_student_with_its_selection(shared_dir, tmp_path, capsys):
    student = shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
    out = tmp_path / "elastic.tflite"
    args = ["opa", "build", "--student", str(student), "--out", str(out), "--frames", "2"]
    args += ["--video", str(shared_dir / "videos/vtest.avi"), "--resolutions", "513,257"]
    assert trainer_main([*args, "--depths", "0,2", "--train-steps", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    # the selection is fitted on the frame the sub-networks did not train on
    assert report["frames"] == {"trained": 1, "fitted": 1}
    assert [s["name"] for s in report["subnets"]] == ["r513_d0", "r513_d2", "r257_d0", "r257_d2"]
    model = ElasticModel.of(out.read_bytes())
    assert read_selector(model) is not None and len(model.subnets) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--resolutions", "513,300"], "resolution 300"),
        (["--depths", "0,99"], "depth 99"),
        (["--student", "/nonexistent.tflite"], "nonexistent"),
    ],
)
def test_opa_build_errors_are_one_line(shared_dir, tmp_path, capsys, change, message):
    student = shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
    args = ["opa", "build", "--student", str(student), "--out", str(tmp_path / "e.tflite")]
    args += ["--video", str(shared_dir / "videos/vtest.avi"), "--frames", "1", *change]
    assert trainer_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_an_elastic_students_session_trains_its_subnets_and_sends_verified_updates(
    shared_dir, elastic, tmp_path
):
    model = tmp_path / "elastic.tflite"
    model.write_bytes(elastic)
    raw = trainer_raw(tmp_path, lr=0.01, gamma=1.0)  # every weight, far enough to move a step
    raw["student"]["model"] = model
    config = TrainerConfig.model_validate(raw)
    session = Session(
        "cam-1", config, load_teacher(config.teacher), elastic, directory=tmp_path / "cam-1"
    )
    assert isinstance(session.student, ElasticStudent)
    segment, h264 = vtest_segments(shared_dir)[0]
    session.deliver(decode(encode(segment, device_id="cam-1", seq=1, boot="1" * 16, body=h264)))
    out = []
    while session.has_work:
        out += session.step()
    (update,) = [o for o in out if isinstance(o.msg, Update)]
    applied = verify_and_apply(update.msg, elastic, update.body)  # the device's own check
    before, after = TFLiteFile(elastic), TFLiteFile(applied.data)
    head = next(t for t in before.trainable if t.name == "opa/head/weights")
    assert not np.array_equal(before.values(head), after.values(head))  # the head trained too
    assert applied.data == session.mirror.data
    ElasticModel.of(applied.data)


def test_the_session_refits_the_selection_and_sends_it_after_the_phases_update(
    shared_dir, elastic, measured, tmp_path
):
    model = tmp_path / "elastic.tflite"
    initial = with_selector(elastic, fit_selector(measured))
    model.write_bytes(initial)
    raw = trainer_raw(tmp_path, lr=0.01, gamma=1.0)
    raw["student"]["model"] = model
    raw["opa"] = {"refit_phases": 1}
    config = TrainerConfig.model_validate(raw)
    session = Session(
        "cam-1", config, load_teacher(config.teacher), initial, directory=tmp_path / "cam-1"
    )
    session.device = DeviceView(update_formats=("qdelta", "zpatch"))
    segment, h264 = vtest_segments(shared_dir)[0]
    session.deliver(decode(encode(segment, device_id="cam-1", seq=1, boot="1" * 16, body=h264)))
    out = []
    while session.has_work:
        out += session.step()
    weights, refit = [o for o in out if isinstance(o.msg, Update)]
    assert (weights.msg.format, refit.msg.format) == ("qdelta", "zpatch")
    assert refit.msg.base_version == weights.msg.new_version  # one after the other
    device = verify_and_apply(weights.msg, initial, weights.body).data
    device = verify_and_apply(refit.msg, device, refit.body).data  # the device's own checks
    assert device == session.mirror.data and session.stats.selector_refits == 1
    assert len(refit.body) < 4096  # the metadata rewritten in place: a small patch
    before, after = (read_selector(ElasticModel.of(d)) for d in (initial, device))
    assert after is not None and after != before  # fitted on the session's frames
    assert TFLiteFile(initial).with_data(device).trainable  # the layout qdelta patches stays
    # a device still on the first version catches up across the refit: values alone would
    # leave its old selection (and fail the hash), so it gets the byte patch
    catch_up = session.mirror.update_since(weights.msg.base_version, UpdateFormat.QDELTA)
    assert catch_up is not None and catch_up.msg.format == "zpatch"
    assert verify_and_apply(catch_up.msg, initial, catch_up.body).data == session.mirror.data


def test_a_refit_rewrites_the_selection_in_place_and_refuses_what_does_not_fit(elastic, measured):
    first = with_selector(elastic, fit_selector(measured))
    held = TFLiteFile(first).metadata(SELECTOR_METADATA)
    refit = fit_selector(measured, allowance_s=0.002)
    again = with_selector(first, refit)
    assert len(again) == len(first)  # in place: the layout stays
    assert read_selector(ElasticModel.of(again)) == refit
    changed = [i for i, (a, b) in enumerate(zip(first, again, strict=True)) if a != b]
    start = first.index(held)
    assert changed and start <= changed[0] and changed[-1] < start + len(held)
    with pytest.raises(TFLiteFormatError, match="holds"):
        TFLiteFile(first).with_metadata(SELECTOR_METADATA, b" " * (len(held) + 1))
    with pytest.raises(TFLiteFormatError, match="no metadata"):
        TFLiteFile(elastic).with_metadata(SELECTOR_METADATA, b"{}")


def test_the_labels_a_score_map_is_judged_against_follow_both_axes():
    labels = np.arange(6 * 4).reshape(6, 4)  # taller than wide
    rows, cols = [0, 2, 5], [0, 2, 3]  # 3 points spread over each axis
    assert _on_grid(labels, 3).tolist() == labels[rows][:, cols].ravel().tolist()


def test_the_refit_is_due_every_few_phases_on_frames_measured_before_training(
    elastic, measured, frames, caplog
):
    model = with_selector(elastic, fit_selector(measured))
    refit = SelectorRefit(OpaConfig(refit_phases=2, frames=3, per_phase=2))
    samples = [
        Sample(float(i), f, np.zeros((513, 513), np.uint8)) for i, f in enumerate(frames[:3])
    ]
    assert refit.refitted(model) is None  # phase 1: not due, nothing measured
    refit.observe(model, samples, (0,))
    assert refit.frames == 2  # the newest per_phase of the phase's samples
    refitted = refit.refitted(model)  # phase 2: due
    assert refitted is not None and len(refitted) == len(model)
    refit.observe(model, samples, (0,))
    assert refit.frames == 3 and refit.refitted(model) is None  # bounded; phase 3: not due
    # phase 4, due, on a file with no room for the selection in place: none, and the log says
    # what to do
    assert refit.refitted(elastic) is None and "cloud-trainer opa build" in caplog.text


def test_the_runtime_runs_opa_frame_by_frame_and_reports_it(
    shared_dir, elastic, measured, tmp_path
):
    model = tmp_path / "elastic.tflite"
    model.write_bytes(with_selector(elastic, fit_selector(measured)))
    profile = bundled_profile(
        "cpu",
        tmp_path,
        device_id="cpu-0",
        model={"initial": str(model)},
        opa={"enabled": True, "budget_ms": 1000.0},
    )
    runtime = EdgeRuntime.from_profile(profile, connect=False)
    engine = runtime.model.engine
    assert isinstance(engine, OpaEngine) and engine.selector_state == "shipped"
    with open_source(str(shared_dir / "videos/vtest.avi")) as source:
        for i, frame in zip(range(6), source, strict=False):
            if i == 3:
                engine.selection.budget_s = 1e-6  # a load no sub-network fits: the smallest
            assert runtime.process(frame).shape == (513, 513)  # every frame labelled
    report = engine.telemetry()
    assert report.frames == 6 and report.selector == "shipped"
    assert report.subnets == {"r513_d0": 3, "r257_d8": 3}
    assert report.over_budget == 3 and report.actual_p50_ms > 0
    telemetry = runtime._telemetry.report(
        bytes_up=0, bytes_down=0, swaps=0, spool_depth=0, model_version=None, counters={},
        opa=report,
    )  # fmt: skip
    assert Telemetry.model_validate(telemetry.model_dump()).opa == report  # it travels there
    runtime.shutdown()


def test_a_model_of_the_same_subnets_keeps_the_costs_and_the_load(student, head, elastic, tmp_path):
    model = tmp_path / "elastic.tflite"
    model.write_bytes(elastic)
    profile = bundled_profile("cpu", tmp_path, device_id="cpu-0", model={"initial": str(model)},
                              opa={"enabled": True, "budget_ms": 50.0})  # fmt: skip
    open_engine = engine_opener(profile)
    first = open_engine(elastic)
    file = TFLiteFile(elastic)
    weights = file.trainable[0]
    updated = open_engine(file.patched({weights.index: 255 - file.values(weights)}))
    assert isinstance(first, OpaEngine) and isinstance(updated, OpaEngine)
    # an update changes weights, not ops: the costs are not timed again, the load carries over
    assert updated.selection.load is first.selection.load
    assert updated.selection._candidates == first.selection._candidates
    other = open_engine(elastic_model(student, head, ElasticLayout((513, 257), (0,))))
    assert isinstance(other, OpaEngine)  # other sub-networks: timed, and their load tracked anew
    assert other.selection.load is not first.selection.load
    assert [c.name for c in other.selection._candidates] == ["r513_d0", "r257_d0"]


def test_opa_on_a_plain_model_is_a_model_error(shared_dir, tmp_path):
    profile = bundled_profile(
        "cpu", tmp_path, device_id="cpu-0", opa={"enabled": True, "budget_ms": 20.0}
    )
    with pytest.raises(ModelError, match=r"not an elastic student.*cloud-trainer opa build"):
        EdgeRuntime.from_profile(profile, connect=False)


def test_opa_needs_the_litert_backend(tmp_path):
    with pytest.raises(ProfileError, match="opa"):
        bundled_profile(
            "coral-devboard", tmp_path, device_id="coral-0", opa={"enabled": True},
        )  # fmt: skip
