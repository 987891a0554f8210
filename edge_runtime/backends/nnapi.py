"""``backend = "nnapi"``: LiteRT with the NNAPI delegate (Android's NPU/DSP/GPU drivers)."""

from __future__ import annotations

from typing import ClassVar, Literal

from edge_runtime.backends.litert import DelegateConfig, Library


class NnapiConfig(DelegateConfig):
    """``backend = "nnapi"``: options such as ``execution_preference = "sustained_speed"``."""

    backend: Literal["nnapi"] = "nnapi"
    library: Library = "libnnapi_delegate.so"
    install: ClassVar[str] = "Android 8.1+: ship the delegate in the app, set [inference] library"
