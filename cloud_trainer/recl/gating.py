"""RECL's gating network (seed 003 §6.3.1, §6.3.3): from a device's latest frames, a predicted
accuracy for every expert of the zoo, so that only the top K go through the safety check.

It predicts accuracy, not similarity: it is trained on the mIoU each expert was measured to
reach on teacher-labelled frames. Its input is what the pretrained student sees in a frame,
computed once per frame: the student's whole-image pooled backbone features and its mean class
probabilities (``FrameFeatures``). One output unit per expert: an expert that joins gets a new
unit, initialised from the mean and spread of the existing units' weights, and the other units
keep theirs (§6.3.3); an expert that leaves takes its unit with it. Training minimises the
squared error on the (frame, expert) pairs whose accuracy was measured (``GatingData``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cloud_trainer.student import TFLiteStudent, import_tflite
from cloud_trainer.student.tflite.ops import AveragePool
from shared_schema.tflite_file import TFLiteFile

FEATURE_SIDE = 257  # frames are scaled to this before the student looks at them: 1/4 the work


class FrameFeatures:
    """The pretrained student's view of frames, as the gating network's input."""

    def __init__(self, student_file: bytes) -> None:
        self._student: TFLiteStudent = import_tflite(student_file).eval()
        self._student.fake_quant = False
        pools = [op for op in self._student.ops if isinstance(op, AveragePool) and op.whole_input]
        # the image-pooling branch's input summary; without one, the class mass alone
        self._taps = (pools[-1].output,) if pools else ()
        file = TFLiteFile(student_file)
        self.dim = self._student.num_classes + sum(file.tensor(t).shape[-1] for t in self._taps)

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(N, D) float32 features of an (N, H, W, 3) uint8 batch."""
        x = torch.as_tensor(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(FEATURE_SIDE, FEATURE_SIDE), mode="area")
        x = self._student.input_quant.from_grid(x).permute(0, 2, 3, 1)  # as the file says
        logits, *pooled = self._student.activations(x, (self._student.logits_index, *self._taps))
        parts = [F.softmax(logits, 1).mean((2, 3))] + [p.flatten(1) for p in pooled]
        return torch.cat(parts, 1).numpy().astype(np.float32)


class GatingNetwork(nn.Module):
    """Predicted mIoU (0-1) of each expert, by id, on each frame's features."""

    def __init__(self, feature_dim: int, hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        # the features' mean and spread over the training frames (set by ``train_gating``)
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.body = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU())
        self.weight = nn.Parameter(torch.empty(0, hidden))
        self.bias = nn.Parameter(torch.empty(0))
        self.experts: list[str] = []
        self._generator = generator

    def forward(self, features: Tensor) -> Tensor:
        hidden = self.body((features - self.mean) / self.std)
        return torch.sigmoid(hidden @ self.weight.T + self.bias)

    def add(self, expert_id: str) -> None:
        """A unit for a new expert, drawn from the mean and spread of the existing units'
        weights (§6.3.3: it starts where the other experts' predictors are)."""
        if expert_id in self.experts:
            return
        hidden = self.weight.shape[1]
        if self.experts:
            mean, std = self.weight.detach().mean(0), self.weight.detach().std(0, unbiased=False)
            row = mean + std * torch.randn(hidden, generator=self._generator)
            bias = self.bias.detach().mean().reshape(1)
        else:
            row = torch.randn(hidden, generator=self._generator) / hidden**0.5
            bias = torch.zeros(1)
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), row[None]]))
        self.bias = nn.Parameter(torch.cat([self.bias.detach(), bias]))
        self.experts.append(expert_id)

    def remove(self, expert_id: str) -> None:
        if expert_id not in self.experts:
            return
        keep = [i for i, e in enumerate(self.experts) if e != expert_id]
        self.weight = nn.Parameter(self.weight.detach()[keep])
        self.bias = nn.Parameter(self.bias.detach()[keep])
        self.experts = [self.experts[i] for i in keep]

    @torch.no_grad()
    def predict(self, features: np.ndarray) -> dict[str, float]:
        """Each expert's predicted mIoU, averaged over the frames."""
        if not self.experts:
            return {}
        scores = self(torch.as_tensor(features)).mean(0)
        return dict(zip(self.experts, scores.tolist(), strict=True))

    def top_k(self, features: np.ndarray, k: int) -> list[str]:
        """The ``k`` experts with the highest predicted mIoU on these frames, best first."""
        predicted = self.predict(features)
        return sorted(predicted, key=predicted.__getitem__, reverse=True)[:k]


class GatingData:
    """The frames the gating network learns from and every expert's measured mIoU on them.

    Bounded: past ``capacity`` frames, a random old one makes room for each new one, so that
    the set mixes the zoo's history with its latest frames at a constant size (§6.3.3)."""

    def __init__(self, capacity: int = 512, seed: int = 0) -> None:
        self.capacity = capacity
        self.features: list[np.ndarray] = []
        self.accuracy: list[dict[str, float]] = []  # per frame: expert id → measured mIoU
        self.frames: list[object] = []  # per frame: what a new expert is measured on
        self.keys: list[Hashable] = []  # per frame: what names it (a frame judged again)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.features)

    def add(
        self,
        features: np.ndarray,
        accuracy: Mapping[str, float],
        frame: object = None,
        key: Hashable = None,
    ) -> None:
        """A frame and what was measured on it; a frame held already (the same ``key``)
        gets the new measures instead of a second row."""
        if key is not None and key in self.keys:
            self.accuracy[self.keys.index(key)].update(accuracy)
            return
        if len(self.features) >= self.capacity:
            drop = int(self._rng.integers(len(self.features)))
            del self.features[drop], self.accuracy[drop], self.frames[drop], self.keys[drop]
        self.features.append(np.asarray(features, np.float32))
        self.accuracy.append(dict(accuracy))
        self.frames.append(frame)
        self.keys.append(key)

    def measure(self, expert_id: str, accuracy: Sequence[float]) -> None:
        """A new expert's measured mIoU on every frame held, in order."""
        for row, value in zip(self.accuracy, accuracy, strict=True):
            row[expert_id] = float(value)

    def forget(self, expert_id: str) -> None:
        for row in self.accuracy:
            row.pop(expert_id, None)

    def tensors(self, experts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Features (N, D), targets (N, E) and which targets were measured (N, E)."""
        x = torch.as_tensor(np.stack(self.features))
        y = torch.tensor([[row.get(e, 0.0) for e in experts] for row in self.accuracy])
        known = torch.tensor([[e in row for e in experts] for row in self.accuracy])
        return x, y.float(), known


def train_gating(net: GatingNetwork, data: GatingData, steps: int = 200, lr: float = 3e-3) -> float:
    """Fit the network to the measured accuracies (masked MSE); the final loss."""
    if not len(data) or not net.experts:
        return 0.0
    x, y, known = data.tensors(net.experts)
    net.mean.copy_(x.mean(0))
    net.std.copy_(x.std(0, unbiased=False).clamp(min=1e-6))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        optimizer.zero_grad()
        error = (net(x) - y) ** 2
        loss = error[known].mean() if known.any() else error.sum() * 0
        loss.backward()
        optimizer.step()
    return float(loss.detach())
