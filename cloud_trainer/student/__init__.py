"""Trainable students: quantized TFLite models imported as torch modules (the `tflite` package),
and the project's own torch-defined student (`torch_student`: DeepLabV3 on MobileNetV2).

`cloud_trainer.student.agreement.check_agreement` compares an import against LiteRT on video
frames; it stays out of this namespace so that importing the student does not load PyAV.
"""

from cloud_trainer.student.tflite.builders import UnsupportedOpsError
from cloud_trainer.student.tflite.quantization import ConstantSpec, QuantizedConstant, QuantParams
from cloud_trainer.student.tflite.student import (
    TFLiteStudent,
    import_tflite,
    quantized_weights,
    saturated_weights,
    stored_weights,
    student_from,
    tensor_buffer_indices,
)

__all__ = [
    "ConstantSpec",
    "QuantParams",
    "QuantizedConstant",
    "TFLiteStudent",
    "UnsupportedOpsError",
    "import_tflite",
    "quantized_weights",
    "saturated_weights",
    "stored_weights",
    "student_from",
    "tensor_buffer_indices",
]
