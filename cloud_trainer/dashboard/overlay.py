"""The device page's picture: the newest probed frame twice, the device model's labels over the
left copy and the teacher's over the right, each class in its colour (background left clear)."""

from __future__ import annotations

import cv2
import numpy as np

from cloud_trainer.dashboard.records import FrameView

ALPHA = 0.55  # a label's colour over the picture
GAP = 8  # white pixels between the two copies
QUALITY = 85  # JPEG


def palette(classes: int = 256) -> np.ndarray:
    """(classes, 3) uint8 RGB: the PASCAL VOC colour map (each class index's bits spread over
    the three channels), so a class keeps its colour on every page and in every tool that
    draws VOC labels."""
    index = np.arange(classes)
    colours = np.zeros((classes, 3), np.uint8)
    for shift in range(7, -1, -1):
        for channel in range(3):
            bit = (index >> (3 * (7 - shift) + channel)) & 1
            colours[:, channel] |= (bit << shift).astype(np.uint8)
    return colours


PALETTE = palette()


def colour(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``rgb`` with every non-background label painted over it."""
    painted = rgb.astype(np.float32)
    mask = labels > 0
    painted[mask] = (1 - ALPHA) * painted[mask] + ALPHA * PALETTE[labels[mask]]
    return painted.astype(np.uint8)


def overlay_jpeg(view: FrameView) -> bytes:
    """The device's labels (left) and the teacher's (right) over the frame, as a JPEG."""
    left = colour(view.rgb, view.device_labels)
    right = colour(view.rgb, view.teacher_labels)
    gap = np.full((view.rgb.shape[0], GAP, 3), 255, np.uint8)
    picture = np.concatenate([left, gap, right], axis=1)
    ok, encoded = cv2.imencode(".jpg", picture[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    if not ok:
        raise RuntimeError("cv2 could not encode the overlay")
    return encoded.tobytes()
