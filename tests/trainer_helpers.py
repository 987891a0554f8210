"""Small trainer configurations for tests: the real models, tiny training settings."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import tomli_w
import tomllib

from cloud_trainer.config import DEFAULT_CONFIG, PATH_KEYS, TrainerConfig
from cloud_trainer.tools.emulation import EmulatedDevice, local_profile
from edge_runtime.frames import Frame
from edge_runtime.h264 import encode_segment
from edge_runtime.sources import open_source
from shared_schema.config_files import expand_config
from shared_schema.messages import EncoderKnobs, Segment


def trainer_raw(tmp_path: Path, broker=None, **training) -> dict:
    raw = tomllib.loads(DEFAULT_CONFIG.read_text())
    raw["training"].update({"resolution": [129, 129], "iterations": 2, "batch_size": 1, **training})
    raw["checkpoint"] = {"directory": str(tmp_path / "ckpt"), "interval_s": 2.0}
    raw["metrics"] = {"interval_s": 1.0, "prometheus_port": 0}  # tests run many trainers
    raw["asr"]["interval_s"] = 2.0
    if broker is not None:
        raw["mqtt"].update(broker.mqtt_table("trainer"))
    return expand_config(raw, DEFAULT_CONFIG.parent, PATH_KEYS)


def trainer_config(tmp_path: Path, broker=None, **training) -> TrainerConfig:
    return TrainerConfig.model_validate(trainer_raw(tmp_path, broker, **training))


def write_toml(raw: dict, path: Path) -> Path:
    path.write_text(tomli_w.dumps(_plain(raw)))
    return path


def _plain(node: object) -> object:
    """Paths as strings: what TOML can hold."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return str(node) if isinstance(node, Path) else node


def vtest_segments(shared_dir: Path) -> list[tuple[Segment, bytes]]:
    """Four 1 fps segments of vtest.avi, 3 frames each, as the device would upload them."""
    with open_source(str(shared_dir / "videos/vtest.avi")) as source:
        frames = [f for i, f in zip(range(120), source, strict=False) if i % 10 == 0]
    out = []
    for start in range(0, 12, 3):
        chunk = frames[start : start + 3]
        h264 = encode_segment(chunk, EncoderKnobs(bitrate_kbps=200), fps=1.0)
        msg = Segment(
            width=768,
            height=576,
            timestamps=tuple(f.timestamp for f in chunk),
            sampling_rate_fps=1.0,
            bitrate_kbps=200.0,
        )
        out.append((msg, h264))
    return out


def two_scenes(shared_dir: Path) -> tuple[list[Frame], float]:
    """The last 2 s of car-detection.mp4 (a fast pan) then 1.5 s of bottle-detection.mp4, on
    one clock from 0 s, and when the bottles start."""
    videos = shared_dir / "videos"
    with open_source(str(videos / "car-detection.mp4")) as source:
        cars = list(source)
    end = cars[-1].timestamp
    cars = [f for f in cars if f.timestamp > end - 2.0]
    with open_source(str(videos / "bottle-detection.mp4")) as source:
        bottles = [f for f in source if f.timestamp < 1.5]
    start, gap = cars[0].timestamp, end - cars[-2].timestamp
    scenes = [Frame(i, f.timestamp - start, f.video) for i, f in enumerate(cars)]
    after = scenes[-1].timestamp + gap
    scenes += [Frame(len(scenes) + i, after + f.timestamp, f.video) for i, f in enumerate(bottles)]
    return scenes, after + bottles[0].timestamp


def start_device(tmp_path, broker, device_id: str, video: str, **sections) -> EmulatedDevice:
    """An emulated device on ``broker`` playing ``video``, updated every 2 s."""
    profile = local_profile(
        broker.mqtt_table(device_id),
        tmp_path / device_id,
        device_id=device_id,
        buffer={"t_update_s": 2.0},
        telemetry={"interval_s": 5.0, "results_rate_hz": 0.0},
        **sections,
    )
    device = EmulatedDevice(profile, video)
    assert device.runtime.endpoint.wait_connected(10)
    return device


def serve(config_path: Path, *args: str) -> subprocess.Popen:
    """``cloud-trainer serve`` in a process of its own, its output in a log beside the config."""
    log = config_path.with_suffix(".log").open("ab")
    command = ["-m", "cloud_trainer", "--log-level", "WARNING", "serve", "--config",
               str(config_path), *args]  # fmt: skip
    return subprocess.Popen([sys.executable, *command], stdout=log, stderr=log)


def terminate(process: subprocess.Popen) -> None:
    """SIGTERM, as systemd stops it; killed if it has not exited 30 s later."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
