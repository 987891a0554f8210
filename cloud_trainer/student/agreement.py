"""Check that an imported TFLite student reproduces the LiteRT interpreter on real video frames.

Run as `python -m cloud_trainer.student.agreement MODEL VIDEO [--frames N]`; prints JSON.
"""

import argparse
import json
import os
from pathlib import Path
from time import perf_counter
from typing import Any

import av
import numpy as np
import torch
from ai_edge_litert.interpreter import Interpreter

from cloud_trainer.student.tflite.student import import_tflite


def _frame_count(video_path: str) -> int:
    with av.open(video_path) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return stream.frames
        # Some containers do not record a frame count; decoding is the only reliable count.
        return sum(1 for _ in container.decode(stream))


def sample_frames(
    video_path: str | os.PathLike[str], count: int, width: int, height: int
) -> np.ndarray:
    """`count` frames spread evenly over the video, as (n, height, width, 3) uint8 RGB.

    PyAV scales the frames, so every consumer of the array sees identical pixels. n is smaller
    than `count` when the video has fewer frames.
    """
    path = str(video_path)
    total = _frame_count(path)
    wanted = set(np.linspace(0, total - 1, count).round().astype(int).tolist())
    frames = []
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
                if len(frames) == len(wanted):
                    break
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    return np.stack(frames)


def check_agreement(
    model_path: str | os.PathLike[str],
    video_path: str | os.PathLike[str],
    frames: int = 20,
    *,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Label agreement between LiteRT and the imported module (fake-quant) on video frames."""
    threads = torch.get_num_threads()
    interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    output_index = interpreter.get_output_details()[0]["index"]
    _, height, width, _ = input_detail["shape"]
    if input_detail["dtype"] != np.uint8:
        raise ValueError(f"expected a uint8 image input, got {input_detail['dtype']}")
    images = sample_frames(video_path, frames, int(width), int(height))

    start = perf_counter()
    reference = []
    for image in images:
        interpreter.set_tensor(input_detail["index"], image[None])
        interpreter.invoke()
        output = interpreter.get_tensor(output_index)[0]
        # A model without a final ARG_MAX outputs scores; compare their argmax instead.
        reference.append(output if output.ndim == 2 else output.argmax(-1))
    litert_seconds = (perf_counter() - start) / len(images)

    student = import_tflite(model_path)
    student.eval()
    start = perf_counter()
    labels = np.concatenate(
        [
            student.labels(torch.from_numpy(images[i : i + batch_size])).numpy()
            for i in range(0, len(images), batch_size)
        ]
    )
    torch_seconds = (perf_counter() - start) / len(images)

    per_frame = (labels == np.stack(reference)).mean(axis=(1, 2))
    return {
        "pixel_agreement": float(per_frame.mean()),
        "frames": len(images),
        "parameters": student.parameter_count,
        "model": str(model_path),
        "video": str(video_path),
        "min_frame_agreement": float(per_frame.min()),
        "per_frame_agreement": [float(a) for a in per_frame],
        "torch_seconds_per_frame": torch_seconds,
        "litert_seconds_per_frame": litert_seconds,
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("video", type=Path)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    result = check_agreement(args.model, args.video, args.frames, batch_size=args.batch_size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
