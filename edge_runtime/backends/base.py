"""The interface every inference back-end implements, its errors and its common settings.

A back-end is a module with a typed config class (selected in a profile by ``[inference]
backend``) whose ``open`` turns model bytes into an `Engine`. Importing a back-end module never
imports its runtime library: that happens in ``open``, so a device without onnxruntime or a
delegate still imports the whole package and gets a `BackendUnavailable` naming what is missing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared_schema.compat import Self, StrEnum


class Backend(StrEnum):
    LITERT = "litert"  # LiteRT on the CPU, XNNPACK
    EDGETPU = "edgetpu"  # LiteRT + libedgetpu delegate (Coral)
    GPU = "gpu"  # LiteRT + GPU delegate
    NNAPI = "nnapi"  # LiteRT + NNAPI delegate (Android)
    ONNXRUNTIME = "onnxruntime"  # ONNX Runtime (Jetson: TensorRT / CUDA providers)


# Appended to the errors of the accelerated back-ends: the profile change that always works.
CPU_FALLBACK = f'set [inference] backend = "{Backend.LITERT}" in the profile to run on the CPU'


class BackendUnavailable(RuntimeError):
    """The back-end cannot run on this machine; the message says what is missing and which
    profile setting selects another back-end."""


class ModelError(ValueError):
    """The model cannot be used: not a model of this back-end's format, corrupt, or not an image
    segmenter this runtime can feed and read (the message says which)."""


_Size = Annotated[int, Field(ge=1, le=8192)]


class BackendConfig(BaseModel):
    """Settings every back-end shares; each back-end's config adds its own and a ``backend`` tag.

    Pixels are normalized as ``(pixel - input_mean) / input_std`` and then quantized with the
    model input's own scale and zero point; the defaults suit the Coral models (inputs in
    [-1, 1) at scale 1/128, zero point 128, so the quantized input is the raw pixel).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str  # each back-end narrows this to its own Literal tag
    # (height, width) frames are scaled to. None: the model's own, which is the truth for its
    # geometry; needed only for a model that leaves its height or width free (ONNX).
    input_size: tuple[_Size, _Size] | None = None
    threads: int = Field(2, ge=1, le=64)  # CPU threads (kernels, or what a delegate leaves)
    input_mean: float = 128.0
    input_std: float = Field(128.0, gt=0.0)

    @abstractmethod  # pydantic's model metaclass is an ABCMeta: this class cannot be built
    def open(self, model: bytes) -> Engine:
        """Load the model (the file's bytes) on this back-end."""


class Engine(ABC):
    """One loaded model, ready to run as soon as it is constructed.

    Engines share no mutable state, so the runtime can build a standby engine while the active
    one runs and swap them between two frames (``edge_runtime/swap.py``). One engine is not
    safe to call from two threads at once.
    """

    name: str

    @property
    @abstractmethod
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's input tensor."""

    @property
    @abstractmethod
    def num_classes(self) -> int | None:
        """Classes scored by the model, when its output reveals them (not for label maps)."""

    @abstractmethod
    def infer(self, rgb: np.ndarray) -> np.ndarray:
        """Label map (H, W) of integers for an (H, W, 3) uint8 RGB image at `input_size`."""

    @abstractmethod
    def close(self) -> None:
        """Release the model; the engine cannot run afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def read_model(model: bytes | Path) -> bytes:
    """The model's bytes, from memory (a patched slot) or from a file."""
    if isinstance(model, bytes):
        data = model
    else:
        try:
            data = Path(model).read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model {model}: {exc.strerror or exc}") from exc
    if not data:
        raise ModelError("the model is empty (0 bytes)")
    return data


def open_engine(config: BackendConfig, model: bytes | Path) -> Engine:
    """Load `model` on the back-end `config` selects (its class decides which)."""
    return config.open(read_model(model))
