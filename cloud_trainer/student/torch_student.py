"""The project's own torch student: DeepLabV3 (mobile head) on a MobileNetV2 backbone.

For users who define their student in torch, or change its architecture, rather than start from
a TFLite file. Written from scratch (no torchvision, whose PyPI wheels do not import beside this
torch) and shaped like the Coral DeepLab models the project deploys, so that it exports to the
same int8 TFLite ops the device runs and the trainer's importer rebuilds:

- backbone: MobileNetV2 (inverted residuals, ReLU6) with a width multiplier, output stride 16:
  the last stride-2 stage keeps its resolution and dilates its depthwise convolutions instead;
- head: DeepLabV3's mobile ASPP without atrous branches: a 1x1 branch and an image-pooling
  branch, concatenated, projected, classified, then upsampled bilinearly to the input size.

Bilinear resizes align corners, as DeepLab's do: at input sizes 16k + 1 (513, 257, 129, ...)
every feature map is then (size - 1) / 2^j + 1 pixels and the interpolation weights are dyadic,
which the int8 kernels and the importer's fake-quant compute exactly; and torch's symmetric
padding of the stride-2 convolutions is TFLite's SAME padding, so the TFLite graph has no PAD
ops. Other sizes work too, with PAD ops and agreement to rounding instead of to the bit.

Contract (shared with the ONNX and TFLite exports): input NCHW float32, the pixels normalized as
(pixel - 128) / 128 (`normalize`); output NCHW float32 class scores at the input resolution.
Defaults: width 0.5 and 513x513, the size of the Coral dm05 student and of the device profiles;
tests use width 0.35 at 129x129 to stay cheap (the export benchmark's default: 0.35 at
257x257). The model is fully convolutional, so any size runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

# A network built from scratch has no model file to read its geometry from: it takes the one of
# the Coral dm05 student it is shaped after (PASCAL VOC's 21 classes at 513x513), which is also
# what the device profiles expect.
DEFAULT_INPUT_SIZE = (513, 513)  # (height, width)
DEFAULT_NUM_CLASSES = 21
PIXEL_MEAN = 128.0  # the normalization of the Coral models: real input in [-1, 1)
PIXEL_STD = 128.0
# (expansion t, output channels c, blocks n, stride s) of MobileNetV2 (Sandler et al. 2018).
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip
_OUTPUT_STRIDE = 16


class StudentConfig(BaseModel):
    """Everything that decides the student's architecture; saved with its weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: float = Field(0.5, gt=0.0, le=2.0)  # MobileNetV2's width (depth) multiplier
    num_classes: int = Field(DEFAULT_NUM_CLASSES, ge=2)
    head_channels: int = Field(256, ge=8)  # DeepLabV3's ASPP width
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE  # (height, width) the exports are built for


def _divisible(channels: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: nearest multiple of 8, never 10 % below the target."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class _ConvBnAct(nn.Sequential):
    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, dilation * (kernel // 2), dilation, groups, False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU6())
        super().__init__(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int, dilation: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = [] if expansion == 1 else [_ConvBnAct(cin, hidden)]
        layers += [
            _ConvBnAct(hidden, hidden, 3, stride, hidden, dilation),
            _ConvBnAct(hidden, cout, act=False),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class _Backbone(nn.Sequential):
    """MobileNetV2 features at output stride 16 (no final 1280-channel layer, as in DeepLab)."""

    def __init__(self, width: float) -> None:
        cin = _divisible(32 * width)
        layers: list[nn.Module] = [_ConvBnAct(3, cin, 3, 2)]
        current, rate = 2, 1
        for t, c, n, s in _MOBILENET_V2:
            cout = _divisible(c * width)
            for i in range(n):
                stride = s if i == 0 else 1
                if current == _OUTPUT_STRIDE:
                    # Atrous from here on, as in DeepLab's MobileNet: the stride becomes a rate
                    # for the layers after this one.
                    layers.append(_InvertedResidual(cin, cout, 1, t, rate))
                    rate *= stride
                else:
                    layers.append(_InvertedResidual(cin, cout, stride, t, 1))
                    current *= stride
                cin = cout
        super().__init__(*layers)
        self.out_channels = cin


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class DeepLabV3MobileNetV2(nn.Module):
    """The builtin student; see the module docstring for its contract."""

    def __init__(self, config: StudentConfig | None = None) -> None:
        super().__init__()
        self.config = config or StudentConfig()
        self.backbone = _Backbone(self.config.width)
        features, head = self.backbone.out_channels, self.config.head_channels
        self.aspp = _ConvBnAct(features, head)
        self.image_pool = _ConvBnAct(features, head)
        self.project = _ConvBnAct(2 * head, head)
        self.classifier = nn.Conv2d(head, self.config.num_classes, 1)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        pooled = self.image_pool(features.mean((2, 3), keepdim=True))
        y = torch.cat([self.aspp(features), _resize(pooled, features.shape[2:])], 1)
        return _resize(self.classifier(self.project(y)), x.shape[2:])


def normalize(rgb: np.ndarray | Tensor, mean: float = PIXEL_MEAN, std: float = PIXEL_STD) -> Tensor:
    """NHWC uint8 RGB frames as the student's NCHW float input."""
    x = torch.as_tensor(rgb).permute(0, 3, 1, 2).float()
    return (x - mean) / std


@torch.no_grad()
def predict_labels(
    model: nn.Module,
    rgb: np.ndarray,
    batch_size: int = 4,
    *,
    mean: float = PIXEL_MEAN,
    std: float = PIXEL_STD,
) -> np.ndarray:
    """(N, H, W) int64 labels of the model (in eval mode) for NHWC uint8 frames."""
    was_training = model.training
    model.eval()
    try:
        return np.concatenate(
            [
                model(normalize(rgb[i : i + batch_size], mean, std)).argmax(1).numpy()
                for i in range(0, len(rgb), batch_size)
            ]
        )
    finally:
        model.train(was_training)


def distill(
    model: nn.Module,
    frames: np.ndarray,
    labels: np.ndarray,
    steps: int,
    *,
    batch_size: int = 2,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """`steps` Adam steps of per-pixel cross-entropy against teacher labels; the losses.

    frames: (N, H, W, 3) uint8 at the student's size; labels: (N, H, W) class indices (255 or
    any value outside the classes is ignored, like pixels the teacher does not label).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    target = torch.as_tensor(labels).long()
    num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    if num_classes is not None:
        target = target.masked_fill((target < 0) | (target >= num_classes), 255)
    model.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(len(frames), (min(batch_size, len(frames)),), generator=generator)
        logits = model(normalize(frames[pick.numpy()]))
        loss = F.cross_entropy(logits, target[pick], ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def save_checkpoint(model: DeepLabV3MobileNetV2, path: str | os.PathLike[str]) -> Path:
    """The student's config and weights in one file, loadable without this session's code."""
    path = Path(path)
    torch.save({"config": model.config.model_dump(), "state_dict": model.state_dict()}, path)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> DeepLabV3MobileNetV2:
    """A student saved by `save_checkpoint`, in eval mode."""
    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = DeepLabV3MobileNetV2(StudentConfig(**saved["config"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval()
