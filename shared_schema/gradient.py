"""DNNGrad as it travels (OneAdapt, seed 000 §4): one number per 16x16 macroblock, H.264's
coding unit, quantised to a byte; the ``Gradient`` message's body, row by row. The trainer
makes it (``cloud_trainer.oneadapt.dnngrad``), the device weighs its InputGrad with it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MACROBLOCK = 16  # pixels per side of H.264's coding unit


def macroblocks(width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of macroblocks covering a ``width`` x ``height`` picture."""
    return -(-height // MACROBLOCK), -(-width // MACROBLOCK)


def block_means(values: np.ndarray) -> np.ndarray:
    """The mean of a (H, W) array over each macroblock, (rows, cols); the last row and column
    of blocks may be partial, and average what they hold."""
    height, width = values.shape
    rows, cols = macroblocks(width, height)
    padded = np.full((rows * MACROBLOCK, cols * MACROBLOCK), np.nan, np.float64)
    padded[:height, :width] = values
    blocks = padded.reshape(rows, MACROBLOCK, cols, MACROBLOCK)
    return np.nanmean(blocks, axis=(1, 3)).astype(np.float32)


@dataclass(frozen=True)
class GradientMap:
    """|∂z/∂pixel| averaged per macroblock of a ``width`` x ``height`` picture, (rows, cols)."""

    values: np.ndarray  # float32, per unit of 8-bit pixel value
    width: int
    height: int

    def quantized(self) -> tuple[bytes, float]:
        """One byte per macroblock, row by row, and the value 255 stands for (linear)."""
        top = float(self.values.max())
        if top <= 0.0:
            return bytes(self.values.size), 0.0
        return np.round(self.values / top * 255.0).astype(np.uint8).tobytes(), top

    @classmethod
    def of_bytes(cls, data: bytes, scale: float, width: int, height: int) -> GradientMap:
        """The map ``quantized`` gave; ValueError unless ``data`` is one byte per macroblock."""
        rows, cols = macroblocks(width, height)
        if len(data) != rows * cols:
            raise ValueError(f"{len(data)} bytes for {rows} x {cols} macroblocks")
        q = np.frombuffer(data, np.uint8).astype(np.float32)
        return cls((q * (scale / 255.0)).reshape(rows, cols), width, height)

    def per_pixel(self) -> np.ndarray:
        """(height, width): each pixel given its macroblock's value."""
        spread = np.repeat(np.repeat(self.values, MACROBLOCK, axis=0), MACROBLOCK, axis=1)
        return spread[: self.height, : self.width]
