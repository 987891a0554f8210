"""Teachers: the large models whose labels the students learn (SPEC §6), as plug-ins.

A teacher turns RGB frames at its input size into label maps. Built in: any TFLite model
through LiteRT (the default), an ONNX model through ONNX Runtime (both through the edge
runtime's own back-ends, so pre-processing is the same code), and a torch module (e.g. an
imported TFLite teacher on a GPU). All are chosen by a typed config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.backends.base import Engine

if TYPE_CHECKING:
    from cloud_trainer.student import TFLiteStudent

# Soft scores are kept at 1/8 of the teacher's input on each side: DeepLab's logits are bilinear
# upsamplings of an output-stride-16 grid, so little is lost, and 21x65x65 float16 is 177 KB a
# sample where the full 513x513 would be 11 MB.
SOFT_STRIDE = 8


class Teacher(ABC):
    @property
    @abstractmethod
    def input_size(self) -> tuple[int, int]:
        """(height, width) the teacher's frames must have."""

    @abstractmethod
    def label(self, rgb: np.ndarray) -> np.ndarray:
        """(N, H, W) int64 labels for an (N, H, W, 3) uint8 RGB batch at ``input_size``."""

    def scores(self, rgb: np.ndarray) -> np.ndarray:
        """(N, C, ceil(H/8), ceil(W/8)) float16 logits, area-averaged, for KL distillation."""
        raise NotImplementedError(
            'this teacher gives labels only: set [teacher] kind = "torch" for its scores'
        )


class _EngineTeacher(Teacher):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def input_size(self) -> tuple[int, int]:
        return self._engine.input_size

    def label(self, rgb: np.ndarray) -> np.ndarray:
        return np.stack([self._engine.infer(frame) for frame in rgb]).astype(np.int64)


class _TorchTeacher(Teacher):
    def __init__(self, module: TFLiteStudent, device: str, batch: int) -> None:
        import torch

        self._torch = torch
        self._module = module.to(device).eval()
        self._device = device
        self._batch = batch

    @property
    def input_size(self) -> tuple[int, int]:
        return self._module.input_size

    def label(self, rgb: np.ndarray) -> np.ndarray:
        return np.concatenate(self._chunks(rgb, self._module.labels)).astype(np.int64)

    def scores(self, rgb: np.ndarray) -> np.ndarray:
        height, width = self.input_size
        grid = (-(-height // SOFT_STRIDE), -(-width // SOFT_STRIDE))
        pool = self._torch.nn.functional.adaptive_avg_pool2d
        chunks = self._chunks(rgb, lambda x: pool(self._module(x), grid).half())
        return np.concatenate(chunks)

    def _chunks(self, rgb: np.ndarray, run: Callable[[Any], Any]) -> list[np.ndarray]:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(rgb), self._batch):
                chunk = torch.from_numpy(np.ascontiguousarray(rgb[start : start + self._batch]))
                out.append(run(chunk.to(self._device)).cpu().numpy())
        return out


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["litert", "onnxruntime", "torch"] = "litert"
    model: Path  # .tflite (litert, torch: imported with fake quantization), .onnx
    threads: Annotated[int, Field(ge=1, le=256)] = 2
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    device: str = "cpu"  # torch only: "cuda" on a GPU machine
    batch: Annotated[int, Field(ge=1, le=256)] = 8


def load_teacher(config: TeacherConfig) -> Teacher:
    data = config.model.read_bytes()
    if config.kind == "torch":
        from cloud_trainer.student import import_tflite

        return _TorchTeacher(import_tflite(data), config.device, config.batch)
    # The engines take their input size from the model file.
    if config.kind == "onnxruntime":
        from edge_runtime.backends.onnxruntime import OnnxRuntimeConfig

        backend = OnnxRuntimeConfig(
            backend="onnxruntime", threads=config.threads, providers=config.providers
        )
    else:
        from edge_runtime.backends.litert import LiteRtConfig

        backend = LiteRtConfig(backend="litert", threads=config.threads)
    return _EngineTeacher(backend.open(data))
