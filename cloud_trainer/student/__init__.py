"""Trainable students: quantized TFLite models imported as torch modules.

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
