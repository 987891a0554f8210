"""LiteRT: the CPU back-end, and the plumbing the delegate back-ends (Edge TPU, GPU, NNAPI) share.

The interpreter comes from ``ai_edge_litert``, or from ``tflite_runtime`` where that is what the
device has (Coral's Debian packages); both are imported only when a model is opened.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from edge_runtime.backends.base import (
    CPU_FALLBACK,
    Backend,
    BackendConfig,
    BackendUnavailable,
    ModelError,
)
from edge_runtime.backends.tensors import TensorEngine, TensorSpec

_INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
_PLUGIN_ENTRY = "tflite_plugin_create_delegate"  # what makes a .so a LiteRT external delegate

Library = Annotated[str, Field(min_length=1)]  # a delegate's soname (the loader finds it) or path


def litert() -> ModuleType:
    """The LiteRT interpreter module (``Interpreter``, ``load_delegate``) installed here."""
    for name in _INTERPRETER_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailable(
        "LiteRT is not installed (neither ai_edge_litert nor tflite_runtime imports):"
        " pip install ai-edge-litert (the edge extra), or set [inference] backend ="
        f' "{Backend.ONNXRUNTIME}" in the profile to run an ONNX model'
    )


def load_delegate(library: str, options: Mapping[str, str], install: str) -> Any:
    """A LiteRT external delegate; `install` says how to get `library` when it is missing."""
    module = litert()
    try:
        # Loaded here first so that a missing library is a clean error: LiteRT's own loader
        # leaves a half-built Delegate behind whose destructor fails noisily.
        handle = ctypes.CDLL(library)
    except OSError as exc:
        raise BackendUnavailable(
            f"{library} could not be loaded: {exc}; {install}, or {CPU_FALLBACK}"
        ) from exc
    if not hasattr(handle, _PLUGIN_ENTRY):
        raise BackendUnavailable(
            f"{library} is not a LiteRT delegate plugin (it has no {_PLUGIN_ENTRY});"
            f" set [inference] library to the delegate's library, or {CPU_FALLBACK}"
        )
    try:
        return module.load_delegate(library, dict(options))
    except ValueError as exc:
        raise BackendUnavailable(
            f"{library} refused to create its delegate with options {dict(options)}: {exc};"
            f" check the accelerator is present and the profile's [inference] options,"
            f" or {CPU_FALLBACK}"
        ) from exc


def prepared(build: Callable[[], Any]) -> Any:
    """The interpreter `build` makes, tensors allocated; failures name the model's problem."""
    try:
        interpreter = build()
        interpreter.allocate_tensors()
    except BackendUnavailable:
        raise
    except (ValueError, RuntimeError) as exc:
        message = "LiteRT cannot load the model: " + " ".join(str(exc).split())
        if "edgetpu-custom-op" in str(exc):
            message += (
                f'; it is compiled for the Edge TPU: set [inference] backend = "{Backend.EDGETPU}"'
                " in the profile, or deploy the CPU .tflite it was compiled from"
            )
        raise ModelError(message) from exc
    return interpreter


def new_interpreter(
    model: bytes, threads: int, delegates: Sequence[Any] = (), xnnpack: bool = True
) -> Any:
    """A ready LiteRT interpreter for the model's bytes, with `delegates` applied in order."""
    module = litert()
    resolver = module.OpResolverType
    return prepared(
        lambda: module.Interpreter(
            model_content=model,
            num_threads=threads,
            experimental_delegates=list(delegates) or None,
            experimental_op_resolver_type=(
                resolver.AUTO if xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            ),
        )
    )


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    scale, zero_point = detail["quantization"]
    return TensorSpec(
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


class LiteRtEngine(TensorEngine):
    """A LiteRT interpreter (CPU, or with delegates applied) behind the Engine interface."""

    def __init__(self, interpreter: Any, config: BackendConfig) -> None:
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        super().__init__(config, [_spec(d) for d in inputs], [_spec(d) for d in outputs])
        self._interpreter = interpreter
        self._input_index = inputs[0]["index"]
        self._output_index = outputs[0]["index"]

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        # One copy, straight into the input buffer: set_tensor first makes a padded frame
        # contiguous. The view is gone before invoke, which refuses to run while one lives.
        self._interpreter.tensor(self._input_index)()[...] = tensor
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output_index)  # a copy, never a view

    def _release(self) -> None:
        self._interpreter = None


class LiteRtConfig(BackendConfig):
    """``backend = "litert"``: LiteRT on the CPU."""

    backend: Literal["litert"] = "litert"
    xnnpack: bool = True  # off: LiteRT's builtin kernels alone (they round a few ties otherwise)

    def open(self, model: bytes) -> LiteRtEngine:
        return LiteRtEngine(new_interpreter(model, self.threads, xnnpack=self.xnnpack), self)


class DelegateConfig(BackendConfig):
    """A back-end that is LiteRT plus one external delegate, named by its library."""

    library: Library
    options: dict[str, str] = Field(default_factory=dict)  # passed to the delegate as they are
    install: ClassVar[str]  # how to get the library, for the error when it is missing

    def open(self, model: bytes) -> LiteRtEngine:
        delegate = load_delegate(self.library, self.options, self.install)
        return LiteRtEngine(new_interpreter(model, self.threads, [delegate]), self)
