"""``backend = "onnxruntime"``: ONNX Runtime, for Jetson (TensorRT, CUDA) or any CPU.

The ONNX model takes one NCHW image, float (normalized as the profile says: for the students
derived from the Coral models, ``(pixel - 128) / 128``, the real-valued input of the quantized
model) or integer, and returns NCHW class scores or an (N, H, W) label map. A Jetson installs
NVIDIA's onnxruntime-gpu build for its JetPack; elsewhere the ``jetson`` extra brings the CPU one.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from edge_runtime.backends.base import Backend, BackendConfig, BackendUnavailable, ModelError
from edge_runtime.backends.tensors import TensorEngine, TensorSpec

_INSTALL = (
    "install onnxruntime (pip install 'amstream[jetson]'; on a Jetson, NVIDIA's onnxruntime-gpu"
    " build for its JetPack)"
)
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def _onnxruntime() -> ModuleType:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise BackendUnavailable(
            f"onnxruntime is not installed: {_INSTALL}, or set [inference] backend ="
            f' "{Backend.LITERT}" in the profile to run a .tflite model on the CPU'
        ) from exc


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _DTYPES:
        raise ModelError(f"unsupported ONNX tensor type {arg.type} of {arg.name!r}")
    return TensorSpec(
        # Symbolic (named) dimensions are free ones.
        shape=tuple(d if isinstance(d, int) else None for d in arg.shape),
        dtype=np.dtype(_DTYPES[arg.type]),
        channels_last=False,
    )


class OnnxRuntimeEngine(TensorEngine):
    """An ONNX Runtime session behind the Engine interface."""

    def __init__(self, session: Any, config: BackendConfig) -> None:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        super().__init__(config, [_spec(a) for a in inputs], [_spec(a) for a in outputs])
        self._session = session
        self._input_name = inputs[0].name
        self._output_names = [outputs[0].name]

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        return self._session.run(self._output_names, {self._input_name: tensor})[0]

    def _release(self) -> None:
        self._session = None


class OnnxRuntimeConfig(BackendConfig):
    """``backend = "onnxruntime"``: execution providers in order of preference."""

    backend: Literal["onnxruntime"] = "onnxruntime"
    providers: tuple[str, ...] = Field(("CPUExecutionProvider",), min_length=1)
    # Per provider, e.g. TensorrtExecutionProvider = { trt_fp16_enable = "True" }
    provider_options: dict[str, dict[str, str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _options_of_listed_providers(self) -> OnnxRuntimeConfig:
        unlisted = sorted(set(self.provider_options) - set(self.providers))
        if unlisted:
            raise ValueError(f"provider_options names providers not in providers: {unlisted}")
        return self

    def open(self, model: bytes) -> OnnxRuntimeEngine:
        return OnnxRuntimeEngine(self._session(model), self)

    def _session(self, model: bytes) -> Any:
        ort = _onnxruntime()
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise BackendUnavailable(
                f"ONNX Runtime execution providers {missing} are not in this onnxruntime build,"
                f" which has {available}: install a build with them (onnxruntime-gpu for CUDA"
                f" and TensorRT), or set [inference] providers to some of {available} in the"
                " profile"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        errors = importlib.import_module("onnxruntime.capi.onnxruntime_pybind11_state")
        try:
            return ort.InferenceSession(
                model,
                options,
                providers=list(self.providers),
                provider_options=[self.provider_options.get(p, {}) for p in self.providers],
                # A provider that fails to start is an error, not a silent fall back to the CPU.
                enable_fallback=0,
            )
        except (
            errors.InvalidProtobuf,
            errors.InvalidGraph,
            errors.InvalidArgument,
            errors.NoModel,
            errors.NotImplemented,
        ) as exc:
            raise ModelError(f"ONNX Runtime cannot load the model: {exc}") from exc
        except (ValueError, RuntimeError, errors.EPFail) as exc:
            raise BackendUnavailable(
                f"ONNX Runtime could not start the providers {list(self.providers)}: {exc};"
                " check their libraries (CUDA, cuDNN, TensorRT) are installed, or set"
                " [inference] providers in the profile"
            ) from exc
