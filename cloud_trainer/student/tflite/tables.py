"""What the importer translates from TFLite's enums and layouts into torch: op and activation
names, the fused activations (as float functions and as real-valued clamp bounds), and where
each TFLite axis goes in the torch tensor. Tensor types and their storage dtypes are
`shared_schema.tflite_file`'s."""

from collections.abc import Callable

import torch.nn.functional as F
from ai_edge_litert import schema_py_generated as schema
from torch import Tensor


def _names(enum: type) -> dict[int, str]:
    return {
        code: name
        for name, code in vars(enum).items()
        if not name.startswith("_") and isinstance(code, int)
    }


OP_NAMES = _names(schema.BuiltinOperator)
ACTIVATION_NAMES = _names(schema.ActivationFunctionType)

# Where each NHWC axis of a rank-4 TFLite tensor lives in the NCHW torch tensor.
NHWC_TO_NCHW_AXIS = (0, 2, 3, 1)
# TFLite filter layouts, permuted into torch's conv weight layouts.
CONV_WEIGHT_TO_TORCH = (0, 3, 1, 2)  # OHWI -> OIHW
DEPTHWISE_WEIGHT_TO_TORCH = (3, 0, 1, 2)  # 1HWC -> C1HW
BIAS_TO_TORCH = (0,)

FLOAT_ACTIVATIONS: dict[int, Callable[[Tensor], Tensor]] = {
    schema.ActivationFunctionType.NONE: lambda x: x,
    schema.ActivationFunctionType.RELU: F.relu,
    schema.ActivationFunctionType.RELU6: F.relu6,
    schema.ActivationFunctionType.RELU_N1_TO_1: lambda x: x.clamp(-1.0, 1.0),
}
# Real-valued clamp bounds of each fused activation (None: unbounded on that side).
ACTIVATION_BOUNDS: dict[int, tuple[float | None, float | None]] = {
    schema.ActivationFunctionType.NONE: (None, None),
    schema.ActivationFunctionType.RELU: (0.0, None),
    schema.ActivationFunctionType.RELU6: (0.0, 6.0),
    schema.ActivationFunctionType.RELU_N1_TO_1: (-1.0, 1.0),
}
