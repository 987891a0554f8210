"""Pre- and post-processing shared by every back-end, driven by the model's tensor metadata.

Input: one normalization for every input dtype, ``real = (pixel - input_mean) / input_std``,
then quantized with the input tensor's own scale and zero point when the tensor is an integer
one. Pixels are uint8, so the whole mapping is a 256-entry table built once per engine and a
frame costs one table lookup. Output: a label map is used as it is (ARG_MAX inside the graph, as
in the Coral models); scores get an argmax over their class axis.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.backends.base import BackendConfig, Engine, ModelError


@dataclass(frozen=True)
class TensorSpec:
    """What a back-end reports about one model input or output."""

    shape: tuple[int | None, ...]  # None: a dimension the model leaves free (ONNX)
    dtype: np.dtype
    scale: float = 0.0  # real = scale * (q - zero_point); 0 means not quantized, as in TFLite
    zero_point: int = 0
    channels_last: bool = True  # NHWC (LiteRT); False for NCHW (ONNX)


def normalization_table(spec: TensorSpec, mean: float, std: float) -> np.ndarray:
    """The input tensor's value for each pixel value 0..255, in the tensor's dtype."""
    real = (np.arange(256, dtype=np.float64) - mean) / std
    if np.issubdtype(spec.dtype, np.floating):
        return real.astype(spec.dtype)
    if not np.issubdtype(spec.dtype, np.integer):
        raise ModelError(f"unsupported model input dtype {spec.dtype}")
    # An integer tensor without quantization parameters holds the real values themselves.
    q = real / spec.scale + spec.zero_point if spec.scale > 0 else real
    rounded = np.sign(q) * np.floor(np.abs(q) + 0.5)  # half away from zero, like TFLite's QUANTIZE
    info = np.iinfo(spec.dtype)
    return np.clip(rounded, info.min, info.max).astype(spec.dtype)


def _layout(spec: TensorSpec) -> str:
    return "NHWC" if spec.channels_last else "NCHW"


def image_size(spec: TensorSpec, config: BackendConfig) -> tuple[int, int]:
    """(height, width) of an image input: the model's, checked against the profile's
    ``input_size`` where one is set, which also fills the dimensions a model leaves free."""
    if len(spec.shape) != 4:
        raise ModelError(f"the model input must be one {_layout(spec)} image, got {spec.shape}")
    batch, *rest = spec.shape
    height, width, channels = rest if spec.channels_last else (rest[1], rest[2], rest[0])
    if batch not in (1, None) or channels != 3:
        raise ModelError(
            f"the model input must be one RGB image ({_layout(spec)}, N = 1, C = 3),"
            f" got {spec.shape}"
        )
    if config.input_size is None:
        if height is None or width is None:
            raise ModelError(
                f"the model leaves its input size free ({spec.shape}): set [inference]"
                " input_size = [height, width]"
            )
        return height, width
    # A free dimension takes the profile's size.
    size = (
        config.input_size[0] if height is None else height,
        config.input_size[1] if width is None else width,
    )
    if size != tuple(config.input_size):
        raise ModelError(
            f"the model's input is {size[0]}x{size[1]} (height x width) but the profile's"
            f" [inference] input_size is {config.input_size[0]}x{config.input_size[1]}:"
            f" set input_size = [{size[0]}, {size[1]}] or deploy a model of that size"
        )
    return size


class LabelDecoder:
    """Turns the model's output tensor into an (H, W) label map."""

    def __init__(self, spec: TensorSpec) -> None:
        self.class_axis: int | None = None  # axis of one image's scores; None: labels already
        self.num_classes: int | None = None
        if len(spec.shape) == 3 and np.issubdtype(spec.dtype, np.integer):
            return
        if len(spec.shape) != 4:
            raise ModelError(
                f"the model output must be a label map (1, H, W) or scores ({_layout(spec)}),"
                f" got {spec.shape} {spec.dtype}"
            )
        self.class_axis = 2 if spec.channels_last else 0
        self.num_classes = spec.shape[self.class_axis + 1]
        if self.num_classes is not None and self.num_classes < 2:
            raise ModelError(f"the model output scores {self.num_classes} class: {spec.shape}")

    def __call__(self, output: np.ndarray) -> np.ndarray:
        image = output[0]
        # Quantized scores need no dequantizing: a positive scale keeps their order.
        return image if self.class_axis is None else image.argmax(axis=self.class_axis)


class TensorEngine(Engine):
    """An engine over a model with one image input and one label or score output.

    A back-end describes the model's tensors and runs the model (`_run`); normalization, layout
    and decoding happen here, the same for every back-end.
    """

    def __init__(
        self, config: BackendConfig, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
    ) -> None:
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"the model must have one input and one output, it has {len(inputs)} and"
                f" {len(outputs)}"
            )
        (input_spec,), (output_spec,) = inputs, outputs
        self.name = config.backend
        self._size = image_size(input_spec, config)
        table = normalization_table(input_spec, config.input_mean, config.input_std)
        # The Coral models take the raw pixels: no per-frame lookup then.
        identity = table.dtype == np.uint8 and np.array_equal(table, np.arange(256))
        self._table = None if identity else table
        self._channels_last = input_spec.channels_last
        self._decode = LabelDecoder(output_spec)
        self._closed = False

    @property
    def input_size(self) -> tuple[int, int]:
        return self._size

    @property
    def num_classes(self) -> int | None:
        return self._decode.num_classes

    def infer(self, rgb: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError(f"the {self.name} engine is closed")
        height, width = self._size
        if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"expected a {height}x{width}x3 uint8 RGB image (Frame.rgb({width}, {height})),"
                f" got {rgb.shape} {rgb.dtype}"
            )
        return self._decode(self._run(self.prepare(rgb)))

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """The input tensor (batch of one) the model gets for this image; may be a view of it.

        A channels-last one stays a view, rows padded as the decoder left them: the back-end
        copies it into its input once. A transposed one is made contiguous here.
        """
        x = rgb if self._table is None else np.take(self._table, rgb)
        if self._channels_last:
            return x[np.newaxis]
        return np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])

    def close(self) -> None:
        self._closed = True
        self._release()

    @abstractmethod
    def _run(self, tensor: np.ndarray) -> np.ndarray:
        """The model's raw output tensor for one prepared input tensor."""

    @abstractmethod
    def _release(self) -> None:
        """Drop the runtime objects that hold the model."""
