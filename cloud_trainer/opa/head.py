"""The pioneer's head, fitted: a per-pixel linear classifier on the pioneer's features that
scores the classes the way the student does, so that its confidences say how sure the shallow
stages already are (the input of OPA's accuracy estimator, seed 004 eq. 1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cloud_trainer.opa.elastic import PioneerHead, pioneer_end
from cloud_trainer.student import import_tflite
from shared_schema.tflite_file import TFLiteFile

_STEPS = 300
_PIXELS = 20_000  # sampled per step: the fit needs the class balance, not every pixel


def fit_head(
    student: bytes, frames: Sequence[np.ndarray], labels: Sequence[np.ndarray], stride: int
) -> PioneerHead:
    """Fit the head on `frames` (uint8 RGB at the student's input size) to `labels` (label maps
    at that size: the teacher's, or the student's own when no teacher has seen them)."""
    boundary = pioneer_end(TFLiteFile(student), stride).output
    model = import_tflite(student)
    batch = torch.from_numpy(np.stack(frames))
    with torch.no_grad():
        (features,) = model.activations(batch, (boundary,))  # N, C, h, w
    step = (batch.shape[1] - 1) // (features.shape[2] - 1)  # input pixels per feature pixel
    targets = torch.from_numpy(np.stack(labels)[:, ::step, ::step].astype(np.int64))
    x = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    y = targets.reshape(-1)
    linear = nn.Linear(x.shape[1], model.num_classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(_STEPS):
        pick = torch.randint(0, x.shape[0], (min(_PIXELS, x.shape[0]),), generator=generator)
        loss = nn.functional.cross_entropy(linear(x[pick]), y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = linear(x)
    reach = float(scores.abs().max()) * 1.05 + 1e-3  # the grid spans every score it saw
    return PioneerHead(
        weights=linear.weight.detach().double().numpy(),
        bias=linear.bias.detach().double().numpy(),
        scores_range=(-reach, reach),
    )
