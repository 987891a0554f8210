"""The export formats and the agreement each must reach; light, for the command line."""

from enum import StrEnum


class ExportFormat(StrEnum):
    TFLITE_FP16 = "tflite-fp16"
    TFLITE_INT8 = "tflite-int8"
    EDGETPU = "edgetpu"
    ONNX = "onnx"


# Pixel agreement an export must reach against the torch model (issue #7): float exports lose
# only rounding, int8 ones the quantization.
TARGETS = {
    ExportFormat.TFLITE_FP16: 0.995,
    ExportFormat.ONNX: 0.995,
    ExportFormat.TFLITE_INT8: 0.97,
    ExportFormat.EDGETPU: 0.97,
}
