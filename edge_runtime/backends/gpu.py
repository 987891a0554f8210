"""``backend = "gpu"``: LiteRT with its GPU delegate (OpenCL / OpenGL ES)."""

from __future__ import annotations

from typing import ClassVar, Literal

from edge_runtime.backends.litert import DelegateConfig, Library


class GpuConfig(DelegateConfig):
    """``backend = "gpu"``: ``library`` is LiteRT's GPU delegate built as an external delegate."""

    backend: Literal["gpu"] = "gpu"
    library: Library = "libtensorflowlite_gpu_delegate.so"
    install: ClassVar[str] = (
        "build LiteRT's GPU delegate for this device (libtensorflowlite_gpu_delegate.so) and"
        " set [inference] library to its path"
    )
