"""Training the elastic student offline on teacher-labelled frames, by the sandwich rule: what
`cloud-trainer opa build --train-steps` does before the device first gets the file, so that its
sub-networks start close to the whole student. The AMS loop keeps them up afterwards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cloud_trainer.ams.training import class_weights
from cloud_trainer.opa.elastic_student import ElasticStudent
from shared_schema.metrics import ClassSubset


@dataclass(frozen=True)
class ElasticTraining:
    steps: int = 200
    batch_size: int = 4
    crop: int = 321  # 16k+1, so every resolution's crop is too
    lr: float = 3e-4
    seed: int = 0


def random_crops(
    frames: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    count: int,
    side: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` random side x side crops of random frames, with their labels (NHWC uint8, NHW)."""
    picks, crops, targets = rng.integers(0, len(frames), count), [], []
    for i in picks:
        height, width = frames[i].shape[:2]
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crops.append(frames[i][top : top + side, left : left + side])
        targets.append(labels[i][top : top + side, left : left + side])
    return torch.from_numpy(np.stack(crops)), torch.from_numpy(np.stack(targets).astype(np.int64))


def train_elastic(
    data: bytes,
    frames: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    settings: ElasticTraining,
) -> tuple[bytes, list[float]]:
    """The elastic file with its weights trained; and the loss of every step."""
    elastic = ElasticStudent(data)
    subset = ClassSubset(elastic.file.num_classes)
    for target in labels:
        subset.observe(target)
    weights = class_weights(subset.seen, elastic.file.num_classes, "cpu")
    optimizer = torch.optim.Adam(elastic.parameters(), lr=settings.lr)
    rng = np.random.default_rng(settings.seed)
    losses = []
    elastic.train()
    for _ in range(settings.steps):
        rgb, target = random_crops(frames, labels, settings.batch_size, settings.crop, rng)
        loss = elastic.sandwich_loss(rgb, target, weights, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    elastic.eval()
    return elastic.file.patched(elastic.stored()), losses
