"""OPA's elastic student (seed 004, issue 16): sub-networks of the real Coral student in one
TFLite file, run by LiteRT, sharing one set of weights that one verified update patches."""

from __future__ import annotations

import copy

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from cloud_trainer.opa.elastic import (
    ElasticBuildError,
    ElasticLayout,
    PioneerHead,
    elastic_model,
    pioneer_end,
    residual_blocks,
    skip_order,
)
from cloud_trainer.opa.head import fit_head
from edge_runtime.backends.litert import LiteRtConfig
from edge_runtime.opa.subnets import ElasticModel, head_key, macs
from edge_runtime.sources import open_source
from shared_schema.envelope import sha256_hex
from shared_schema.messages import Update
from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError
from shared_schema.update_formats import qdelta, verify_and_apply


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
        assert out.shape == labels[1].shape  # label maps keep the student's size
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
