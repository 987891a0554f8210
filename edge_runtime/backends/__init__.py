"""Inference back-ends: one module per runtime or delegate, each with its typed config.

A profile's ``[inference]`` table is an `InferenceConfig`: its ``backend`` field picks the config
class, and `open_engine(config, model)` loads a model on that back-end. No runtime library is
imported until a model is opened, so this package imports on any device.
"""

from typing import Annotated

from pydantic import Field

from edge_runtime.backends.base import (
    Backend,
    BackendConfig,
    BackendUnavailable,
    Engine,
    ModelError,
    open_engine,
    read_model,
)
from edge_runtime.backends.edgetpu import EdgeTpuConfig
from edge_runtime.backends.gpu import GpuConfig
from edge_runtime.backends.litert import LiteRtConfig
from edge_runtime.backends.nnapi import NnapiConfig
from edge_runtime.backends.onnxruntime import OnnxRuntimeConfig

InferenceConfig = Annotated[
    LiteRtConfig | EdgeTpuConfig | GpuConfig | NnapiConfig | OnnxRuntimeConfig,
    Field(discriminator="backend"),
]

__all__ = [
    "Backend",
    "BackendConfig",
    "BackendUnavailable",
    "EdgeTpuConfig",
    "Engine",
    "GpuConfig",
    "InferenceConfig",
    "LiteRtConfig",
    "ModelError",
    "NnapiConfig",
    "OnnxRuntimeConfig",
    "open_engine",
    "read_model",
]
