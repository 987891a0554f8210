"""Reading a model's graph through shared_schema.tflite_file: its geometry (input size, classes)
and the general read accessors, on the real Coral models."""

from __future__ import annotations

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from shared_schema.tflite_file import TFLiteFile, TFLiteFormatError

CORAL = "models/coral"
PASCAL = ["deeplabv3_mnv2_dm05_pascal_quant.tflite", "deeplabv3_mnv2_pascal_quant.tflite"]
CITYSCAPES = "deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite"


def _model(shared_dir, name: str) -> bytes:
    return (shared_dir / CORAL / name).read_bytes()


def _rewritten(data: bytes, change) -> bytes:
    """The model after ``change(model)`` on its unpacked form, packed again."""
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    change(model)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.parametrize("name", PASCAL)
def test_the_coral_pascal_models_take_513x513_and_score_21_classes(shared_dir, name):
    model = TFLiteFile(_model(shared_dir, name))
    assert model.input_size == (513, 513)
    assert model.num_classes == 21


def test_the_cityscapes_model_scores_its_19_classes(shared_dir):
    assert TFLiteFile(_model(shared_dir, CITYSCAPES)).num_classes == 19


def test_geometry_follows_the_file_not_the_model_family(shared_dir):
    def smaller_input(model: schema.ModelT) -> None:
        graph = model.subgraphs[0]
        graph.tensors[graph.inputs[0]].shape = np.array([1, 257, 321, 3], np.int32)

    def ends_with_scores(model: schema.ModelT) -> None:
        graph = model.subgraphs[0]
        graph.outputs = np.array(graph.operators.pop().inputs[:1], np.int32)

    data = _model(shared_dir, PASCAL[0])
    assert TFLiteFile(_rewritten(data, smaller_input)).input_size == (257, 321)
    scores = TFLiteFile(_rewritten(data, ends_with_scores))
    assert scores.operators[-1].code != schema.BuiltinOperator.ARG_MAX
    assert scores.num_classes == 21  # the output's channels


def test_any_tensor_and_integer_constant_can_be_read(shared_dir):
    model = TFLiteFile(_model(shared_dir, PASCAL[0]))
    arg_max = model.operators[-1]
    assert arg_max.code == schema.BuiltinOperator.ARG_MAX and arg_max.custom_code == ""
    assert int(model.tensor_values(arg_max.inputs[1])) == 3  # over the channels of NHWC
    scores = model.tensor(arg_max.inputs[0])
    assert scores.dtype == np.uint8 and scores.shape == (1, 513, 513, 21)
    assert scores.scale.size == 1 and scores.zero_point.size == 1
    resize = next(op for op in model.operators if op.code == schema.BuiltinOperator.RESIZE_BILINEAR)
    assert model.tensor_values(resize.inputs[1]).dtype == np.int32
    assert model.builtin_options(resize).alignCorners
    weight = model.trainable[0]
    assert np.array_equal(model.tensor_values(weight.index).ravel(), model.values(weight))


def test_tensors_without_stored_values_are_refused(shared_dir):
    model = TFLiteFile(_model(shared_dir, PASCAL[0]))
    (image,) = model.inputs
    with pytest.raises(TFLiteFormatError, match="not an integer constant"):
        model.tensor_values(image)
    with pytest.raises(TFLiteFormatError, match="no tensor"):
        model.tensor(10_000)
