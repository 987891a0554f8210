"""One AMS training phase (seed 002 Algorithm 1, lines 10-15, with Algorithm 2's masked Adam).

K steps, each on a mini-batch drawn uniformly from the last T_horizon seconds of labelled
samples; per-pixel cross-entropy against the teacher's labels, restricted to the stream's
classes (pixels the teacher gives any other class are ignored); the student runs with fake
quantization at its frozen scales, so what it learns survives the write-back to the device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from cloud_trainer.ams.coordinate_descent import CoordinateAdam, Selection
from cloud_trainer.profiling import StageClock
from cloud_trainer.sample_buffer import SampleBuffer

_Side = Annotated[int, Field(ge=33, le=2049)]


class TrainingConfig(BaseModel):
    """SPEC §6 defaults, except two CPU-friendly settings: batch 4 on random 321x321 crops
    (the paper's GPUs used larger batches of whole frames), and lr 1e-4 rather than 1e-3: the
    imported student is already trained, BN folded, its weights on a frozen int8 grid, and at
    1e-3 a phase of K = 20 steps often pushed it off (mIoU against the teacher fell, some
    phases collapsed to one class); 1e-4 gains steadily (see README, "Training settings")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gamma: float = Field(0.05, gt=0.0, le=1.0)  # fraction of parameters each phase updates
    iterations: int = Field(20, ge=1, le=10_000)  # K
    lr: float = Field(1e-4, gt=0.0)
    # the lr within a phase: linear warm-up over its first steps, then constant or a cosine
    # decay to zero at step K (the sweep in README, "Training settings")
    warmup_steps: int = Field(0, ge=0, le=10_000)
    decay: Literal["constant", "cosine"] = "constant"
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = Field(4, ge=1, le=512)
    # (height, width) samples are kept at; None: the student's input size (`for_student`)
    frame_size: tuple[_Side, _Side] | None = None
    resolution: tuple[_Side, _Side] = (321, 321)  # (height, width) of the crops trained on
    horizon_s: float = Field(240.0, gt=0.0)  # T_horizon
    selection: Selection = Selection.GRADIENT
    # the loss counts only the stream's classes (other pixels are ignored); False: all of them
    class_subset: bool = True
    # "labels": cross-entropy on the teacher's labels; "kl": KL divergence from the teacher's
    # scores at ``temperature`` (needs a teacher that gives them: [teacher] kind = "torch")
    distillation: Literal["labels", "kl"] = "labels"
    temperature: float = Field(1.0, gt=0.0, le=100.0)
    device: str = "cpu"  # "cuda" where a GPU is available
    seed: int = 0

    def for_student(self, input_size: tuple[int, int]) -> TrainingConfig:
        """These settings for a student of ``input_size`` (height, width): samples are kept at
        that size unless ``frame_size`` says otherwise."""
        if self.frame_size is not None:
            return self
        return self.model_validate({**self.model_dump(), "frame_size": input_size})


@dataclass(frozen=True)
class PhaseResult:
    seconds: float
    first_loss: float
    last_loss: float
    samples: int  # in the buffer when the phase ran
    stages: dict[str, float] = field(default_factory=dict)  # seconds: batch, forward, ...


def new_optimizer(student: torch.nn.Module, config: TrainingConfig) -> CoordinateAdam:
    return CoordinateAdam(
        list(student.parameters()),
        gamma=config.gamma,
        lr=config.lr,
        betas=config.betas,
        selection=config.selection,
        seed=config.seed,
    )


def class_weights(classes: tuple[int, ...], num_classes: int, device: str) -> torch.Tensor:
    """1 for the stream's classes, 0 for the others: their pixels drop out of the loss."""
    weights = torch.zeros(num_classes, device=device)
    weights[list(classes)] = 1.0
    return weights


def kl_loss(
    logits: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[int, ...] | None,
    temperature: float,
) -> torch.Tensor:
    """Hinton et al. 2015: T² KL(softmax(z_t/T) ‖ softmax(z_s/T)), the mean over pixels, with
    both distributions over ``classes`` (None: all) and only pixels the teacher labels one of
    them, as the cross-entropy ignores the others."""
    if classes is not None:
        index = torch.tensor(classes, device=logits.device)
        logits, teacher = logits.index_select(1, index), teacher.index_select(1, index)
        keep = torch.isin(labels, index)
    else:
        keep = torch.ones_like(labels, dtype=torch.bool)
    log_t = F.log_softmax(teacher / temperature, dim=1)
    log_s = F.log_softmax(logits / temperature, dim=1)
    per_pixel = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    return temperature**2 * per_pixel[keep].sum() / keep.sum().clamp(min=1)


def phase_lr(config: TrainingConfig, step: int) -> float:
    """The lr of a phase's ``step`` (0 to K-1): warm-up to ``lr``, then ``decay``."""
    warm = min(1.0, (step + 1) / (config.warmup_steps + 1))
    if config.decay == "constant":
        return config.lr * warm
    done = max(0, step - config.warmup_steps) / max(1, config.iterations - config.warmup_steps)
    return config.lr * warm * 0.5 * (1.0 + math.cos(math.pi * done))  # SGDR eq. 5, η_min 0


def train_phase(
    student: torch.nn.Module,
    optimizer: CoordinateAdam,
    buffer: SampleBuffer,
    classes: tuple[int, ...],
    config: TrainingConfig,
    rng: np.random.Generator,
    held_out: int = 0,
) -> PhaseResult:
    """K steps on the buffer, leaving out its ``held_out`` newest samples (the gate's)."""
    started = time.perf_counter()
    clock = StageClock(config.device)
    with clock.stage("select"):  # the phase's parameters (lines 1-2)
        student.train()
        optimizer.begin_phase()
        subset = classes if config.class_subset else None
        weights = None if subset is None else class_weights(subset, student.num_classes,
                                                             config.device)  # fmt: skip
    losses = []
    for step in range(config.iterations):
        with clock.stage("batch"):
            rgb, labels, soft = buffer.batch(config.batch_size, rng, config.resolution, held_out)
            x = torch.from_numpy(rgb).to(config.device)
            target = torch.from_numpy(labels.astype(np.int64)).to(config.device)
        with clock.stage("forward"):  # and the loss
            if hasattr(student, "sandwich_loss"):  # an elastic student: its sub-networks (OPA)
                loss = student.sandwich_loss(x, target, weights, rng)
            elif config.distillation == "kl" and soft is not None:
                scores = student(x)
                loss = kl_loss(scores, soft.to(config.device), target, subset, config.temperature)
            else:  # also a batch holding samples labelled before KL was on (an older checkpoint)
                loss = F.cross_entropy(student(x), target, weight=weights)
        with clock.stage("backward"):
            student.zero_grad(set_to_none=True)
            loss.backward()
        with clock.stage("optimizer"):
            optimizer.lr = phase_lr(config, step)
            optimizer.step()
            losses.append(float(loss.detach()))
    student.eval()
    seconds = time.perf_counter() - started
    return PhaseResult(seconds, losses[0], losses[-1], len(buffer), clock.seconds)
