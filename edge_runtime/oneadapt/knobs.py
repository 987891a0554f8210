"""The knobs OneAdapt moves, as seed 000 §3.5 asks: each normalised to [0, 1] with more
resource upward, taking discrete levels, inside the device profile's ``[knobs]`` bounds.

- quality: x264's constant rate factor, from the profile's coarsest (0) to its finest (1); a
  constant quality rather than a bitrate, because under a bitrate the regions' offsets only
  move bits between regions, and a constant QP ignores them;
- resolution: the upload's share of the source's side;
- per-region quality: one x264 ROI offset per region of a fixed grid, from +``roi_range``
  (coarsest, 0) to -``roi_range`` (finest, 1), within the profile's bound.

Which of them adapt is the profile's ``[oneadapt]`` (``KnobSpace.of``): quality always, the
resolution and the regions where it asks (``cloud-trainer evaluate --uplink`` measures each).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.h264 import even, upload_size
from edge_runtime.profile import KnobsSection, OneAdaptSection
from shared_schema.messages import EncoderKnobs, RegionQuality

SCALES = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)  # the resolution knob's levels


class UnfitBounds(ValueError):
    """The profile's ``[knobs]`` sides admit no upload size of the source."""


@dataclass(frozen=True)
class KnobSpace:
    bounds: KnobsSection
    source: tuple[int, int]  # the source's (width, height)
    quality_levels: int = 16
    scales: tuple[float, ...] = SCALES
    roi_grid: tuple[int, int] = (4, 4)  # (cols, rows); (0, 0): no per-region knobs
    roi_levels: int = 9
    roi_range: float = 0.4  # x264 scales an offset by 25 QP: ±10 QP

    def __post_init__(self) -> None:
        scales = tuple(s for s in self.scales if self._fits(s))
        if not scales:
            width, height = self.source
            b = self.bounds
            raise UnfitBounds(f"profile [knobs]: no upload size of the {width}x{height} source "
                              f"fits min_upload_side..max_upload_side = {b.min_upload_side}.."
                              f"{b.max_upload_side}: widen them")  # fmt: skip
        object.__setattr__(self, "scales", scales)

    @classmethod
    def of(
        cls, config: OneAdaptSection, bounds: KnobsSection, source: tuple[int, int]
    ) -> KnobSpace:
        """The knobs ``config`` adapts: the resolution only where it asks (else the source's
        size), the regions of its grid (none for a grid of 0)."""
        scales = SCALES if config.resolution else (1.0,)
        return cls(bounds, source, scales=scales, roi_grid=(config.roi_cols, config.roi_rows))

    @property
    def regions(self) -> int:
        cols, rows = self.roi_grid
        return cols * rows if self._roi_top > 0 else 0

    @property
    def size(self) -> int:
        """Knobs: quality, resolution, then one per region."""
        return 2 + self.regions

    @property
    def _roi_top(self) -> float:
        return min(self.roi_range, self.bounds.max_roi_qoffset)

    @property
    def steps(self) -> np.ndarray:
        """Each knob's distance between neighbouring levels (its Δk); 0 for a knob of one
        level (the resolution where it does not adapt), which no step or probe moves."""
        roi = 1.0 / (self.roi_levels - 1)
        scales = len(self.scales) - 1
        return np.array([1.0 / (self.quality_levels - 1), 1.0 / scales if scales else 0.0,
                         *([roi] * self.regions)])  # fmt: skip

    def knobs(self, u: np.ndarray) -> EncoderKnobs:
        """The encoder knobs nearest to the normalised vector ``u`` (clipped to [0, 1])."""
        u = np.clip(np.asarray(u, np.float64), 0.0, 1.0)
        coarse, fine = self.bounds.max_crf, self.bounds.min_crf
        level = round(u[0] * (self.quality_levels - 1)) / (self.quality_levels - 1)
        crf = coarse + (fine - coarse) * level
        scale = self.scales[round(u[1] * (len(self.scales) - 1))]
        width = None if scale == 1.0 else even(self.source[0] * scale)
        roi = None
        if self.regions:
            top = self._roi_top
            steps = np.round(u[2:] * (self.roi_levels - 1)) / (self.roi_levels - 1)
            qoffsets = tuple(float(top - 2 * top * s) for s in steps)  # 0 → +top, 1 → -top
            if any(qoffsets):
                cols, rows = self.roi_grid
                roi = RegionQuality(cols=cols, rows=rows, qoffsets=qoffsets)
        return EncoderKnobs(crf=round(crf, 2), width=width, roi=roi)

    def vector(self, knobs: EncoderKnobs) -> np.ndarray:
        """``knobs`` as a normalised vector (the inverse of ``knobs`` on its levels)."""
        coarse, fine = self.bounds.max_crf, self.bounds.min_crf
        quality = 0.5  # a bitrate or a QP has no constant quality: steps start mid-range
        if knobs.crf is not None:
            quality = (coarse - knobs.crf) / (coarse - fine) if coarse > fine else 0.0
        width = upload_size(*self.source, knobs.width, knobs.height)[0]
        widths = [even(self.source[0] * s) for s in self.scales]
        nearest = min(range(len(widths)), key=lambda i: abs(widths[i] - width))
        resolution = nearest / max(1, len(self.scales) - 1)
        regions = np.full(self.regions, 0.5)  # offset 0: as the rate control decides
        roi = knobs.roi
        if self.regions and roi is not None and (roi.cols, roi.rows) == self.roi_grid:
            top = self._roi_top
            regions = (top - np.array(roi.qoffsets)) / (2 * top)
        return np.clip(np.array([quality, resolution, *regions]), 0.0, 1.0)

    def _fits(self, scale: float) -> bool:
        sides = (even(self.source[0] * scale), even(self.source[1] * scale))
        return all(self.bounds.min_upload_side <= s <= self.bounds.max_upload_side for s in sides)


def within_a_level(space: KnobSpace, u: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``target``, each knob moved at most one level from ``u``: the gradients are local, and
    on discrete levels a step of eq. 2 would otherwise jump across the range."""
    steps = space.steps
    return np.clip(target, u - steps, u + steps).clip(0.0, 1.0)


def ascend(
    u: np.ndarray, acc_grad: np.ndarray, resource_grad: np.ndarray, alpha: float, lam: float
) -> np.ndarray:
    """Seed 000 eq. 2: k_{t+1} = k_t + α (AccGrad − λ · resource gradient), in [0, 1]."""
    return np.clip(u + alpha * (acc_grad - lam * resource_grad), 0.0, 1.0)
