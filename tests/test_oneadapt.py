"""OneAdapt's parts (seed 000 §3.3-§4) against their definitions: the output utility, DNNGrad
against finite differences on the real teacher's graph, its per-macroblock map and bytes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cloud_trainer.oneadapt.dnngrad import DnnGrad, output_utility
from cloud_trainer.student import import_tflite
from edge_runtime.profile import KnobsSection, OneAdaptSection
from edge_runtime.sources import open_source
from shared_schema.gradient import MACROBLOCK, GradientMap


@pytest.fixture(scope="module")
def small_frame(shared_dir) -> np.ndarray:
    with open_source(str(shared_dir / "videos/vtest.avi")) as source:
        return next(iter(source)).rgb(40, 24)  # 3 x 2 macroblocks, the last ones partial


@pytest.fixture(scope="module")
def dnngrad64(shared_dir) -> DnnGrad:
    """DNNGrad of the dm05 graph in float64, where finite differences are exact enough."""
    module = import_tflite(shared_dir / "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite")
    return DnnGrad(module.double(), threshold=0.0)


def test_the_utility_counts_confident_object_pixels_by_their_confidence():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    logits = probs.log().T.reshape(1, 3, 2, 2)
    # pixel 0 is background, pixel 3's best object (0.4) is below θ = 0.5: 0.7 + 0.6 remain
    assert float(output_utility(logits, 0.5)) == pytest.approx(1.3, abs=1e-6)
    assert float(output_utility(logits, 0.0)) == pytest.approx(0.05 + 0.7 + 0.6 + 0.4, abs=1e-6)
    assert float(output_utility(logits, 0.5, background=1)) == pytest.approx(0.9 + 0.6, abs=1e-6)


def test_dnngrad_is_the_utilitys_derivative_by_finite_differences(dnngrad64, small_frame):
    grad, utility = dnngrad64.pixels(small_frame)
    assert grad.shape == small_frame.shape and grad.abs().sum() > 0
    rng = np.random.default_rng(0)
    quant = dnngrad64.module.input_quant

    def z(pixels: np.ndarray) -> float:
        with torch.no_grad():
            real = quant.from_grid(torch.as_tensor(pixels, dtype=torch.float64)[None])
            return float(output_utility(dnngrad64.module(real), 0.0))

    eps = 1e-4  # of a pixel value: the graph's ReLU6 kinks are closer than 1e-2 apart
    for _ in range(3):
        direction = rng.standard_normal(small_frame.shape)
        numeric = (z(small_frame + eps * direction) - z(small_frame - eps * direction)) / (2 * eps)
        analytic = float((grad * torch.as_tensor(direction)).sum())
        assert numeric == pytest.approx(analytic, rel=1e-5)
    assert utility == pytest.approx(z(small_frame.astype(np.float64)), rel=1e-9)
    assert all(p.grad is None for p in dnngrad64.module.parameters())  # no weight gradients


def test_no_confident_pixel_costs_no_backward_pass(dnngrad64, small_frame, monkeypatch):
    """Its z is 0 and so is its gradient, exactly: the pass stops after the forward."""
    nothing = DnnGrad(dnngrad64.module, threshold=1.0)  # no probability exceeds 1

    def backward(*args, **kwargs):
        raise AssertionError("a backward pass ran")

    monkeypatch.setattr(torch.autograd, "grad", backward)
    grad_map, utility = nothing(small_frame)
    assert utility == 0.0 and not grad_map.values.any()
    assert grad_map.values.shape == (2, 3)


def test_the_map_is_the_mean_magnitude_per_macroblock_and_survives_its_bytes(
    dnngrad64, small_frame
):
    per_pixel = dnngrad64.pixels(small_frame)[0].abs().sum(dim=2).numpy()
    grad_map, _ = dnngrad64(small_frame)
    assert grad_map.values.shape == (2, 3) and (grad_map.width, grad_map.height) == (40, 24)
    for r in range(2):
        for c in range(3):
            block = per_pixel[r * MACROBLOCK : (r + 1) * MACROBLOCK,
                              c * MACROBLOCK : (c + 1) * MACROBLOCK]  # fmt: skip
            assert grad_map.values[r, c] == pytest.approx(block.mean(), rel=1e-5)
    data, scale = grad_map.quantized()
    assert len(data) == 6 and scale == pytest.approx(grad_map.values.max())
    back = GradientMap.of_bytes(data, scale, 40, 24)
    assert np.allclose(back.values, grad_map.values, atol=scale / 255)
    with pytest.raises(ValueError):
        GradientMap.of_bytes(data[:5], scale, 40, 24)
    zero = GradientMap(np.zeros((2, 3), np.float32), 40, 24).quantized()
    assert zero == (bytes(6), 0.0)


# -- the device's half: knobs, InputGrad, eq. 2 ---------------------------------------------


def _space(**bounds):
    from edge_runtime.oneadapt.knobs import KnobSpace
    from edge_runtime.profile import KnobsSection

    return KnobSpace(KnobsSection(**bounds), source=(768, 576), roi_grid=(2, 2))


def test_the_knob_space_is_normalised_discrete_and_inside_the_bounds():
    space = _space(min_crf=20.0, max_crf=40.0, min_upload_side=200)
    assert space.scales[0] == 0.375 and space.size == 6  # 0.25 of 576 is under 200 pixels
    rng = np.random.default_rng(1)
    for _ in range(20):
        knobs = space.knobs(rng.random(space.size))
        assert space.bounds.refusal(knobs) is None
        assert np.allclose(space.vector(space.knobs(space.vector(knobs))), space.vector(knobs))
    low, high = space.knobs(np.zeros(6)), space.knobs(np.ones(6))
    assert (low.crf, low.width, low.roi.qoffsets) == (40.0, 288, (0.4,) * 4)
    assert (high.crf, high.width, high.roi.qoffsets) == (20.0, None, (-0.4,) * 4)
    assert space.knobs(np.full(6, 0.5)).roi is None  # every offset 0: no regions at all
    assert np.allclose(space.steps, [1 / 15, 1 / 5, 1 / 8, 1 / 8, 1 / 8, 1 / 8])
    assert _space(max_roi_qoffset=0.0).size == 2


def test_the_profile_says_which_knobs_adapt():
    from edge_runtime.oneadapt.knobs import SCALES, KnobSpace

    bounds, source = KnobsSection(), (768, 576)
    quality = KnobSpace.of(OneAdaptSection(), bounds, source)
    assert quality.scales == (1.0,) and quality.regions == 0 and quality.size == 2
    assert quality.steps[1] == 0.0  # resolution: a knob of one level, never moved or probed
    from edge_runtime.oneadapt.input_grad import neighbour

    assert np.array_equal(neighbour(np.array([0.5, 0.0]), [1], quality.steps), [0.5, 0.0])
    knobs = quality.knobs(np.ones(2))
    assert knobs.width is None and knobs.roi is None and knobs.crf == bounds.min_crf
    every = KnobSpace.of(OneAdaptSection(resolution=True, roi_cols=3, roi_rows=2), bounds, source)
    assert every.scales == SCALES and every.regions == 6


def test_a_profile_whose_sides_fit_no_upload_is_a_counted_one_line_error(frame, caplog):
    from edge_runtime.oneadapt.adapter import KnobAdapter
    from shared_schema.counters import Counters
    from shared_schema.messages import EncoderKnobs

    applied, counters = [], Counters()
    bounds = KnobsSection(min_upload_side=1000)  # vtest.avi is 768x576
    adapter = KnobAdapter(OneAdaptSection(enabled=True), bounds, EncoderKnobs(crf=30.0),
                          applied.append, counters)  # fmt: skip
    adapter.sampled(frame)
    adapter.offer(frame.timestamp, GradientMap(np.ones((2, 2), np.float32), 32, 32), 1.0, 1.0)
    for _ in range(100):
        if counters.get("oneadapt.unfit"):
            break
        time.sleep(0.05)
    adapter.close()
    assert counters.get("oneadapt.unfit") == 1 and not applied
    assert counters.get("oneadapt.errors") == 0
    (record,) = [r for r in caplog.records if "min_upload_side" in r.getMessage()]
    assert record.exc_info is None and "768x576" in record.getMessage()
    assert "\n" not in record.getMessage()


def test_eq2_steps_along_accuracy_minus_lambda_resource_and_stays_in_range():
    from edge_runtime.oneadapt.knobs import ascend, within_a_level

    u = np.array([0.5, 0.5, 0.95])
    step = ascend(u, np.array([0.2, 0.0, 1.0]), np.array([100.0, 50.0, 0.0]), 0.5, 1e-3)
    assert np.allclose(step, [0.5 + 0.5 * (0.2 - 0.1), 0.5 - 0.5 * 0.05, 1.0])
    space = _space(max_roi_qoffset=0.0)  # two knobs: a level is 1/15 and 1/5
    assert np.allclose(within_a_level(space, np.array([0.5, 0.5]), np.array([1.0, 0.45])),
                       [0.5 + 1 / 15, 0.45])  # fmt: skip


@pytest.fixture(scope="module")
def frame(shared_dir):
    with open_source(str(shared_dir / "videos/vtest.avi")) as source:
        return next(iter(source))


def test_output_grad_is_dnngrad_times_the_decoded_change_per_knob(frame):
    from edge_runtime.oneadapt.input_grad import gradients, probe

    space = _space()
    values = np.zeros((9, 9), np.float32)
    values[:, :4] = 1.0  # the teacher cares about the left of the picture only
    grad = GradientMap(values, 129, 129)
    u = np.array([8 / 15, 1.0, 0.5, 0.5, 0.5, 0.5])  # on its levels
    result = gradients(frame, space, u, grad, utility=100.0, fps=1.0)
    # by its definition: one level finer, decoded, weighed by DNNGrad, over z and Δk
    up = u.copy()
    up[0] += space.steps[0]
    base, finer = (probe(frame, space.knobs(v), (129, 129), 1.0) for v in (u, up))
    change = np.abs(finer.pixels - base.pixels).sum(axis=2)
    expected = (grad.per_pixel() * change).sum() / space.steps[0] / 100.0
    assert result.acc[0] == pytest.approx(expected, rel=1e-6) and result.acc[0] > 0
    assert result.kbps[0] == pytest.approx((finer.size - base.size) * 8 / 1000 / space.steps[0])
    assert result.kbps[0] > 0  # finer quality costs bits
    # at the full resolution already, resolution's gradient is taken one level down: still
    # what a level more is worth, and what it costs
    assert result.acc[1] > 0 and result.kbps[1] > 0
    left, right = result.acc[[2, 4]], result.acc[[3, 5]]  # regions row by row: (0,0) (1,0) ...
    assert left.min() > 0 and right.max() == 0.0  # only where DNNGrad is


def test_dnngrad_needs_a_tflite_teacher(tmp_path):
    from pydantic import ValidationError

    from cloud_trainer.config import TrainerConfig
    from tests.trainer_helpers import trainer_raw

    raw = trainer_raw(tmp_path)
    raw["oneadapt"] = {"enabled": True}
    raw["teacher"] = {"kind": "onnxruntime", "model": str(tmp_path / "teacher.onnx")}
    with pytest.raises(ValidationError, match=r"\.tflite \[teacher\]"):
        TrainerConfig.model_validate(raw)


# -- the evaluation --------------------------------------------------------------------------


def test_the_uplink_evaluation_sets_every_scheme_on_the_same_frames(shared_dir, tmp_path):
    from cloud_trainer.evaluation.uplink import (
        Uplink,
        UplinkSettings,
        run_uplink,
        write_uplink_report,
    )
    from cloud_trainer.teacher import TeacherConfig, load_teacher

    teacher_path = shared_dir / "models/coral/deeplabv3_mnv2_pascal_quant.tflite"
    teacher = load_teacher(TeacherConfig(model=teacher_path))
    knobs = OneAdaptSection(enabled=True, resolution=True, roi_cols=2, roi_rows=1)
    settings = UplinkSettings(clip_s=12.0, interval_s=6.0, sweep_kbps=(50.0, 800.0),
                              profile_crf=(24.0, 40.0), profile_scales=(0.5, 1.0),
                              profile_frames=2, awstream_lams=(1e-4,), oneadapt_lams=(1.0,),
                              knobs=knobs, cosine_every=1)  # fmt: skip
    up = Uplink(teacher.label, DnnGrad(import_tflite(teacher_path)), settings)
    runs = run_uplink(up, [shared_dir / "videos/vtest.avi"], ["fixed", "sweep", "awstream",
                                                              "oneadapt"])  # fmt: skip
    result = write_uplink_report(tmp_path, up, runs, {"command": "test"})
    s = result["schemes"]
    assert set(s) == {"fixed", "sweep_50", "sweep_800", "awstream_0.0001", "oneadapt_1"}
    assert all(len(run.records) == 2 for run in runs.values())  # two 6 s intervals each
    assert 100 < s["fixed"]["uplink_kbps"] < 260  # 200 kbps asked
    assert s["sweep_50"]["uplink_kbps"] < s["sweep_800"]["uplink_kbps"]
    assert s["sweep_50"]["accuracy"] < s["sweep_800"]["accuracy"] <= 1.0
    profiling = s["awstream_0.0001"]
    # one profile per 30 s: the window at the reference and at each of the 4 grid points
    assert profiling["teacher_maps"] == 12 + 2 * 5 and s["fixed"]["teacher_maps"] == 12
    assert s["fixed"]["extra_compute_s"] == 0.0 < profiling["extra_compute_s"]
    assert profiling["extra_compute_s"] == pytest.approx(10 * up.mean_seconds("teacher"))
    adapting = s["oneadapt_1"]
    assert adapting["backward_passes"] == 2 and 0 < adapting["gradient_kbps"] < 2.0
    # the AccGrad measurement is not charged: only the backward passes are extra
    assert adapting["teacher_maps"] == 12
    # vtest's people are confident in both intervals: a backward pass each, none forward alone
    assert adapting["forward_only_passes"] == 0
    assert adapting["extra_compute_s"] == pytest.approx(2 * up.mean_seconds("backward"))
    # AccGrad by its definition: the 6-frame segment again with each of the 4 knobs moved
    assert [r.measure_maps for r in runs["oneadapt_1"].records] == [4 * 6, 4 * 6]
    assert all(len(r.measured) == 4 for r in runs["oneadapt_1"].records)
    assert all(-1 <= c <= 1 for c in adapting["cosines"])
    assert set(result["costs_s"]) == {"teacher", "backward", "forward"}
    assert min(up.costs.values()) > 0
    # timed 5 times on the first interval, once on the second
    assert all(len(seconds) == 6 for seconds in result["timings_s"].values())
    assert 0.0 <= adapting["sign_agreement"] <= 1.0
    assert runs["oneadapt_1"].records[1].knobs != runs["oneadapt_1"].records[0].knobs
    assert len(runs["oneadapt_1"].records[0].acc_grad) == 2 + 2  # quality, resolution, 2 regions
    (fixed, aws) = result["comparisons"]
    assert (fixed["against"], aws["against"]) == ("fixed", "awstream_0.0001")
    assert fixed["uplink_saving"] == pytest.approx(
        1 - adapting["uplink_kbps"] / s["fixed"]["uplink_kbps"]
    )
    assert fixed["equal_accuracy"] == (adapting["accuracy"] >= s["fixed"]["accuracy"] - 0.01)
    assert fixed["compute_share"] is None and aws["compute_share"] > 0
    for name in ("uplink.json", "uplink.md", "uplink.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--lam", "1e-4,lots", "error: --lam: 1e-4,lots: write numbers separated by commas"),
        ("--oneadapt-lam", "x", "error: --oneadapt-lam: x: write numbers separated by commas"),
        ("--oneadapt-knobs", "resolution", "error: --oneadapt-knobs: resolution: choose from"
         " quality, resolution, regions, quality among them"),
        ("--oneadapt-knobs", "quality,zoom", "error: --oneadapt-knobs: quality,zoom: choose"),
    ],
)  # fmt: skip
def test_the_uplink_flags_refuse_bad_values_in_one_line(shared_dir, tmp_path, flag, value, message):
    from cloud_trainer.evaluation.command import add_evaluate_parser
    from edge_runtime.cli import command_parser, run_command

    parser, sub = command_parser("cloud-trainer", "test")
    add_evaluate_parser(sub)
    argv = ["evaluate", "--uplink", "--video", str(shared_dir / "videos/vtest.avi"),
            "--out", str(tmp_path / "out"), flag, value]  # fmt: skip
    with pytest.raises(SystemExit) as refused:
        run_command(parser, argv)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_extra_compute_charges_each_kind_of_pass_at_its_own_cost():
    """Maps beyond the uploads' at a map's cost, a pass with its backward at its cost, and one
    that stopped after the forward (no confident pixel) at that cost."""
    from types import SimpleNamespace

    from cloud_trainer.evaluation.uplink import Record, Run, UplinkSettings

    costs = {"teacher": 0.04, "backward": 0.2, "forward": 0.1}
    up = SimpleNamespace(settings=UplinkSettings(), mean_seconds=costs.__getitem__)
    records = [Record(0, 0.0, 10, {}, 1000, 0.9, 10, backward=1),
               Record(0, 10.0, 10, {}, 1000, 0.9, 12, forward_only=1)]  # fmt: skip
    summary = Run("oneadapt_1", records).summary(up)
    assert (summary["backward_passes"], summary["forward_only_passes"]) == (1, 1)
    assert summary["extra_compute_s"] == pytest.approx(2 * 0.04 + 0.2 + 0.1)


def test_equal_accuracy_means_no_more_than_a_point_below():
    """A OneAdapt run more accurate than the baseline counts as at its accuracy; one more
    than a point below does not."""
    from cloud_trainer.evaluation.uplink import comparisons

    def run(accuracy: float, kbps: float) -> dict:
        return {"accuracy": accuracy, "uplink_kbps": kbps, "extra_compute_s": 1.0}

    summaries = {"oneadapt_1": run(0.86, 100.0), "fixed": run(0.84, 200.0),
                 "awstream_1": run(0.875, 300.0)}  # fmt: skip
    fixed, aws = comparisons(summaries)
    assert fixed["equal_accuracy"] and fixed["uplink_saving"] == pytest.approx(0.5)
    assert not aws["equal_accuracy"] and aws["compute_share"] == pytest.approx(1.0)
