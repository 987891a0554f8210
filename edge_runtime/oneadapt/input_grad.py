"""InputGrad on the device (seed 000 §3.3), and with the trainer's DNNGrad the accuracy
gradient OutputGrad = DNNGrad ⊗ InputGrad, per knob.

The sampled frame the trainer's DNNGrad was taken on is encoded at the current knobs and, per
knob, one level up (down, at the top level; a one-frame segment: an IDR, as every segment
starts), decoded, and brought
to the picture the DNNGrad refers to (the teacher's input: the trainer resizes uploads the same
way). InputGrad is the change of those pixels; OutputGrad sums |DNNGrad| · |ΔInput| over the
picture (§3.4: AccGrad ≈ |OutputGrad|), divided by the frame's utility z to read as a change of
accuracy. The per-region knobs move together in one encoding, each read over its own region
(§4: knobs on non-overlapping areas share one encoding). The resource gradient is the change
of the measured encoded size, in uplink kbps at the sampling rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.frames import Frame
from edge_runtime.h264 import decode_frames, encode_segment, region_boxes
from edge_runtime.oneadapt.knobs import KnobSpace
from shared_schema.gradient import GradientMap
from shared_schema.messages import EncoderKnobs, RegionQuality


@dataclass(frozen=True)
class Probe:
    """The frame as the trainer would see it after an upload at some knobs."""

    pixels: np.ndarray  # (H, W, 3) float32 at the DNNGrad's picture
    size: int  # encoded bytes


def probe(frame: Frame, knobs: EncoderKnobs, picture: tuple[int, int], fps: float) -> Probe:
    """Encode ``frame`` alone at ``knobs``, decode it, and scale it to ``picture`` (w, h)."""
    data = encode_segment([frame], knobs, fps)
    (decoded,) = decode_frames(data, [frame.timestamp])
    return Probe(decoded.rgb(*picture).astype(np.float32), len(data))


@dataclass(frozen=True)
class Gradients:
    acc: np.ndarray  # Δ accuracy per unit of each normalised knob (OutputGrad / z)
    kbps: np.ndarray  # Δ uplink kbps per unit of each normalised knob


def gradients(
    frame: Frame, space: KnobSpace, u: np.ndarray, grad: GradientMap, utility: float, fps: float
) -> Gradients:
    """Each knob's accuracy and bandwidth gradient at the normalised knobs ``u`` (taken at
    their nearest levels, so that one step up is the next level)."""
    u = space.vector(space.knobs(u))
    picture = (grad.width, grad.height)
    weight = grad.per_pixel()
    base = probe(frame, space.knobs(u), picture, fps)
    acc, kbps = np.zeros(space.size), np.zeros(space.size)
    steps = space.steps
    for i in (0, 1):  # quality, resolution: an encoding each
        near = neighbour(u, [i], steps)
        moved = near[i] - u[i]
        if moved == 0.0:
            continue  # a knob of one level
        change = probe(frame, space.knobs(near), picture, fps)
        acc[i] = _output_grad(weight, change.pixels - base.pixels) / abs(moved)
        kbps[i] = _kbps(change.size - base.size, fps) / moved
    if space.regions:
        _regions(frame, space, u, weight, base, acc, kbps, fps)
    return Gradients(acc / max(utility, 1e-9), kbps)


def _regions(
    frame: Frame,
    space: KnobSpace,
    u: np.ndarray,
    weight: np.ndarray,
    base: Probe,
    acc: np.ndarray,
    kbps: np.ndarray,
    fps: float,
) -> None:
    """All region knobs a level up (down at the top) in one encoding (§4), each read over its
    own region; the size change is shared between the regions that moved."""
    index = list(range(2, space.size))
    near = neighbour(u, index, space.steps)
    moved = near[2:] - u[2:]
    if not moved.any():
        return
    change = probe(frame, space.knobs(near), (weight.shape[1], weight.shape[0]), fps)
    delta = change.pixels - base.pixels
    cols, rows = space.roi_grid
    grid = RegionQuality(cols=cols, rows=rows, qoffsets=(0.0,) * (cols * rows))
    boxes = region_boxes(weight.shape[1], weight.shape[0], grid)
    # the size change, shared by the regions in proportion to their moves (signed)
    share = _kbps(change.size - base.size, fps) / np.abs(moved).sum()
    for r, ((x, y, w, h), step) in enumerate(zip(boxes, moved, strict=True)):
        if step == 0.0:
            continue
        region = np.s_[y : y + h, x : x + w]
        acc[2 + r] = _output_grad(weight[region], delta[region]) / abs(step)
        kbps[2 + r] = share * np.sign(step)  # Σ kbps_r · step_r is the measured change


def neighbour(u: np.ndarray, index: list[int], steps: np.ndarray) -> np.ndarray:
    """``u`` with the knobs ``index`` a level up, or a level down where at the top."""
    near = np.array(u, np.float64)
    up = near[index] + steps[index]
    near[index] = np.where(up <= 1.0 + 1e-9, np.minimum(up, 1.0), near[index] - steps[index])
    return near


def _output_grad(weight: np.ndarray, delta: np.ndarray) -> float:
    """Σ over pixels of |DNNGrad| · |ΔInput| (summed over the colour channels)."""
    return float((weight * np.abs(delta).sum(axis=2)).sum())


def _kbps(size_change: int, fps: float) -> float:
    return size_change * 8 * fps / 1000
