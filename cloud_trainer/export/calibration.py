"""Real frames for post-training quantization and for checking an export.

Frames come from a video (or any stream PyAV opens), a directory of images, or arrays the caller
already has (a device's recent samples, as `edge_runtime.frames.Frame.rgb` gives them). Every
source is scaled by swscale to the model's input size, as the device scales its camera frames,
so calibration sees the pixels the model will see.

`split` keeps the frames that check an export apart from those that calibrate it: a quantizer
that has seen a frame's exact activation ranges would flatter the agreement measured on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from edge_runtime.frames import Frame

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


class CalibrationError(ValueError):
    """No usable frames in the calibration source."""


@dataclass(frozen=True)
class FrameSplit:
    """Frames to calibrate the quantizer on, and frames held out to verify the export on."""

    calibration: np.ndarray  # (n, H, W, 3) uint8 RGB
    held_out: np.ndarray  # (m, H, W, 3) uint8 RGB


def _scaled(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    return Frame(0, 0.0, frame).rgb(width, height)


def _video_frames(path: Path, count: int, size: tuple[int, int]) -> np.ndarray:
    """`count` frames spread evenly over the video: calibration should span its scenes."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames or sum(1 for _ in container.decode(stream))
    wanted = set(np.linspace(0, max(total - 1, 0), count).round().astype(int).tolist())
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames.append(_scaled(frame, size))
                if len(frames) == len(wanted):
                    break
    return np.stack(frames) if frames else np.zeros((0, *size, 3), np.uint8)


def _image_frames(directory: Path, count: int, size: tuple[int, int]) -> np.ndarray:
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) > count:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]
    frames = []
    for path in paths:
        with av.open(str(path)) as container:  # FFmpeg's image demuxers: no imaging library
            frames.append(_scaled(next(container.decode(video=0)), size))
    return np.stack(frames) if frames else np.zeros((0, *size, 3), np.uint8)


def _array_frames(arrays: Iterable[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    frames = []
    for array in arrays:
        rgb = np.ascontiguousarray(array, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise CalibrationError(f"expected (H, W, 3) uint8 RGB frames, got {array.shape}")
        if rgb.shape[:2] != size:
            rgb = _scaled(av.VideoFrame.from_ndarray(rgb, format="rgb24"), size)
        frames.append(rgb)
    return np.stack(frames) if frames else np.zeros((0, *size, 3), np.uint8)


def load_frames(
    source: str | os.PathLike[str] | Sequence[np.ndarray],
    size: tuple[int, int],
    count: int,
) -> np.ndarray:
    """Up to `count` frames of `source` as (n, height, width, 3) uint8 RGB at `size`.

    source: a video file, a directory of images, or a sequence of (H, W, 3) uint8 RGB arrays
    (e.g. a device's recent samples), scaled to `size` (height, width) when they differ.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            frames = _image_frames(path, count, size)
        elif path.is_file():
            try:
                frames = _video_frames(path, count, size)
            except av.error.FFmpegError as exc:
                raise CalibrationError(f"{path}: cannot decode frames: {exc}") from exc
        else:
            raise CalibrationError(f"{path}: no such video or image directory")
        where = str(path)
    else:
        frames = _array_frames(source[:count], size)
        where = "the given frames"
    if len(frames) < 2:
        raise CalibrationError(
            f"{where}: {len(frames)} frame(s); calibrating and checking an export need at"
            " least 2 (one of them held out)"
        )
    return frames


def split(frames: np.ndarray, held_out_every: int = 4) -> FrameSplit:
    """Every `held_out_every`-th frame (from the second on) is held out; the rest calibrate.

    Interleaving keeps both sets spread over the whole source.
    """
    if held_out_every < 2:
        raise ValueError("held_out_every must be at least 2")
    held = np.zeros(len(frames), bool)
    held[1::held_out_every] = True
    return FrameSplit(calibration=frames[~held], held_out=frames[held])
