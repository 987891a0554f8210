"""Trainable students: quantized TFLite models imported as torch modules, and the project's own
torch-defined student (`cloud_trainer.student.torch_student`: DeepLabV3 on MobileNetV2).

`cloud_trainer.student.agreement.check_agreement` compares an import against LiteRT on video
frames; it stays out of this namespace so that importing the student does not load PyAV.
"""

from cloud_trainer.student.tflite_import import (
    ConstantSpec,
    QuantizedConstant,
    QuantParams,
    TFLiteStudent,
    UnsupportedOpsError,
    import_tflite,
    quantized_weights,
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
    "tensor_buffer_indices",
]
