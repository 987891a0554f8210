"""``edge-runtime bench``: the runtime against a bare LiteRT loop, measured in the same run.

Throughput: the same decoded frames go through a bare ``set_tensor / invoke / get_tensor``
loop (frames resized beforehand, outside the timing) and through the whole runtime (resize,
inference, sampler, H.264 segment buffer, uplink: a null one, or MQTT to a broker), as fast as
possible, alternating for several rounds; the ratio is the median of the rounds' ratios, so
the noise of a shared machine hits both sides alike. Frames run faster than real time, so the
encoder's share of the CPU is larger here than on a live camera. ``stages_ms`` says where a
frame's time went, over all rounds (``EdgeRuntime.stage_seconds``): the frame loop's wall time
per stage, ``other`` being what no stage covers, and the CPU time of the work beside it, which
costs the loop only where it takes a core inference would have used.

OneAdapt (``oneadapt_every``): each round also runs the runtime with ``[oneadapt]`` on and a
DNNGrad offered every S seconds for its newest sampled frame, so that every S seconds the device
re-encodes a frame at each perturbed knob and steps; its fps over the plain runtime's in the
same round is the cost to the frame loop. Scene cuts (``scene_cut``): likewise, the runtime
with ``[scene_cut]`` on, whose detector looks at every frame.

Swap (``swap_every``): frames paced at a fixed rate while a real qdelta update (5 % of the
weights moved by one quantization step: the device's work does not depend on how the values
were trained) is applied every S seconds through ``submit_model_message``; a frame that starts
more than one period late is dropped, as a camera would drop it. The gaps between results, of
all rounds together, against the same paced runs without updates: the median, p99 and worst.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from edge_runtime.frames import Frame
from edge_runtime.profile import Profile, bundled_profile
from edge_runtime.runtime import EdgeRuntime
from edge_runtime.sources import open_source
from shared_schema.envelope import decode, encode, sha256_hex
from shared_schema.gradient import GradientMap, macroblocks
from shared_schema.messages import Update
from shared_schema.signing import Signer, save_keypair
from shared_schema.tflite_file import TFLiteFile
from shared_schema.update_formats import qdelta


def load_frames(source: str, count: int) -> list[Frame]:
    """The first ``count`` frames of a file, decoded once, kept in memory."""
    with open_source(source) as frames:
        decoded = [frame for _, frame in zip(range(count), frames, strict=False)]
    if not decoded:
        raise ValueError(f"{source}: no frames")
    return decoded


def bench_profile(
    model: Path,
    workdir: Path,
    *,
    threads: int,
    sampling_fps: float,
    bitrate_kbps: float,
    broker: str | None,
    public_key: Path,
    oneadapt: bool = False,
    scene_cut: bool = False,
) -> Profile:
    """The ``cpu`` profile, T_update as it has it, with the benchmark's settings; it trusts
    ``public_key`` alone (the benchmark's own key). Relative paths are the caller's (from the
    current directory), not the bundled profile's."""
    url = urlsplit(f"mqtt://{broker}") if broker else None
    return bundled_profile(
        "cpu",
        workdir,
        device_id="bench-0",
        inference={"threads": threads},
        model={
            "initial": str(model.resolve()),
            "public_key": str(public_key.resolve()),
            "next_public_key": None,
        },
        sampling={
            "min_fps": min(0.1, sampling_fps),
            "max_fps": max(1.0, sampling_fps),
            "initial_fps": sampling_fps,
        },
        buffer={"bitrate_kbps": bitrate_kbps},
        telemetry={"interval_s": 10.0, "results_rate_hz": 0.0},
        oneadapt={"enabled": oneadapt},
        scene_cut={"enabled": scene_cut},
        mqtt={} if url is None else {"host": url.hostname or "127.0.0.1", "port": url.port or 1883},
    )


def bare_fps(model: Path, inputs: list[np.ndarray], threads: int) -> float:
    interpreter = Interpreter(str(model), num_threads=threads)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    started = time.perf_counter()
    for rgb in inputs:
        interpreter.set_tensor(inp["index"], rgb[None])
        interpreter.invoke()
        interpreter.get_tensor(out["index"])
    return len(inputs) / (time.perf_counter() - started)


def runtime_round(
    profile: Profile, frames: list[Frame], broker: str | None, gradient_every_s: float = 0.0
) -> dict:
    runtime = EdgeRuntime.from_profile(profile, connect=broker is not None)
    runtime.start()
    if runtime.endpoint is not None and not runtime.endpoint.wait_connected(10):
        raise RuntimeError(f"cannot reach the broker at {broker}")
    stop = threading.Event()
    feeder = threading.Thread(target=_offer_gradients, args=(runtime, gradient_every_s, stop),
                              daemon=True)  # fmt: skip
    if gradient_every_s:
        feeder.start()
    summary = runtime.run(frames)
    stop.set()
    steps = runtime.counters.get("oneadapt.steps")
    runtime.shutdown()  # the last segment is encoded here: its stages count
    p50, p95 = runtime.stats.latency_ms(50, 95)
    video_s = frames[-1].timestamp - frames[0].timestamp + _period(frames)
    return {
        "fps": summary.fps,
        "frames": summary.frames,
        "seconds": summary.seconds,
        "stage_seconds": runtime.stage_seconds(),
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "uplink_kbps": runtime.counters.get("uplink.bytes_sent") * 8 / video_s / 1000,
        "segments": runtime.counters.get("uplink.segments_accepted"),
        "oneadapt_steps": steps,
        "scene_cuts": runtime.counters.get("scene_cuts"),
    }


def _offer_gradients(runtime: EdgeRuntime, every_s: float, stop: threading.Event) -> None:
    """A DNNGrad (uniform: the device's work does not depend on its values) every ``every_s``
    for the newest frame the sampler took, as the trainer would send it."""
    grad = GradientMap(np.ones(macroblocks(513, 513), np.float32), 513, 513)
    while not stop.wait(every_s):
        adapter = runtime.adapter
        latest = adapter.latest if adapter is not None else None
        if latest is not None:
            adapter.offer(latest, grad, 1000.0, runtime.sampler.rate_fps)


def _period(frames: list[Frame]) -> float:
    return (frames[-1].timestamp - frames[0].timestamp) / max(len(frames) - 1, 1)


def throughput(
    model: Path,
    source: str,
    *,
    frames: int,
    rounds: int,
    threads: int,
    sampling_fps: float,
    bitrate_kbps: float,
    broker: str | None,
    oneadapt_every_s: float = 0.0,
    scene_cut: bool = False,
) -> dict:
    """The runtime against a bare loop on the same frames (the settings' defaults are the
    command line's); with ``oneadapt_every_s``, also the runtime stepping its knobs; with
    ``scene_cut``, also the runtime with its scene-cut detector on."""
    decoded = load_frames(source, frames)
    height, width = TFLiteFile(model.read_bytes()).input_size
    inputs = [frame.rgb(width, height) for frame in decoded]
    arms = {"plain": _Arm()}
    if oneadapt_every_s:
        arms["oneadapt"] = _Arm("oneadapt", "oneadapt_steps", oneadapt_every_s)
    if scene_cut:
        arms["scene_cut"] = _Arm("scene_cut", "scene_cuts")
    bare: list[float] = []
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        _, public_key = _bench_key(Path(tmp))
        for round_index in range(rounds):
            bare.append(bare_fps(model, inputs, threads))
            for name, arm in arms.items():
                profile = bench_profile(
                    model,
                    Path(tmp) / f"round{round_index}-{name}",
                    threads=threads,
                    sampling_fps=sampling_fps,
                    bitrate_kbps=bitrate_kbps,
                    broker=broker,
                    public_key=public_key,
                    **({arm.section: True} if arm.section else {}),
                )
                runs[name].append(runtime_round(profile, decoded, broker, arm.gradient_every_s))
    plain = runs.pop("plain")
    ratios = [run["fps"] / b for run, b in zip(plain, bare, strict=True)]
    extra: dict[str, object] = {}
    for name, arm_runs in runs.items():
        extra |= _arm_figures(name, arms[name], arm_runs, plain)
    return extra | {
        "model": str(model),
        "source": source,
        "frames": len(decoded),
        "rounds": rounds,
        "threads": threads,
        "sampling_fps": sampling_fps,
        "bitrate_kbps": bitrate_kbps,
        "uplink": f"mqtt://{broker}" if broker else "null",
        "fps_bare": statistics.median(bare),
        "fps_runtime": statistics.median(run["fps"] for run in plain),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "latency_p50_ms": statistics.median(run["latency_p50_ms"] for run in plain),
        "latency_p95_ms": statistics.median(run["latency_p95_ms"] for run in plain),
        "uplink_kbps": statistics.median(run["uplink_kbps"] for run in plain),
        "stages_ms": stage_breakdown(plain, bare),
    }


# The frame loop's stages (wall time); the others run beside it (CPU time).
LOOP_STAGES = ("wait", "late_scale", "swap", "inference", "sample", "sinks")
BESIDE_STAGES = ("source", "scale", "encode", "uplink")


def stage_breakdown(runs: list[dict], bare: list[float]) -> dict:
    """Milliseconds per frame over all rounds: a frame of the runtime and of the bare loop, the
    frame loop's stages (``other``: the loop's time no stage covers) and the CPU time of the
    threads beside it."""
    frames = sum(run["frames"] for run in runs)

    def per_frame(seconds: float) -> float:
        return seconds * 1000 / frames

    loop = {stage: stage_ms(runs, stage) for stage in LOOP_STAGES}
    frame_ms = per_frame(sum(run["seconds"] for run in runs))
    return {
        "frame": frame_ms,
        "bare_frame": per_frame(
            sum(run["frames"] / fps for run, fps in zip(runs, bare, strict=True))
        ),
        "loop": loop | {"other": frame_ms - sum(loop.values())},
        "beside_cpu": {stage: stage_ms(runs, stage) for stage in BESIDE_STAGES},
    }


def stage_ms(runs: list[dict], stage: str) -> float:
    """A stage's milliseconds per frame over all rounds."""
    seconds = sum(run["stage_seconds"].get(stage, 0.0) for run in runs)
    return seconds * 1000 / sum(run["frames"] for run in runs)


@dataclass(frozen=True)
class _Arm:
    """A runtime measured beside the plain one: the profile section it turns on, the counter
    that says it acted, and for OneAdapt the DNNGrad period."""

    section: str = ""  # "": the plain runtime
    acted: str = ""
    gradient_every_s: float = 0.0


def _arm_figures(name: str, arm: _Arm, runs: list[dict], plain: list[dict]) -> dict:
    """What an arm's feature costs the frame loop: fps with it over fps without, per round;
    how often it acted (knob steps, scene cuts); the sampler's stage a frame, where the scene
    detector runs (the plain runtime's is in ``stages_ms``)."""
    ratios = [run["fps"] / p["fps"] for run, p in zip(runs, plain, strict=True)]
    figures = {
        f"fps_runtime_{name}": statistics.median(run["fps"] for run in runs),
        f"{name}_ratio": statistics.median(ratios),
        f"{name}_ratios": ratios,
        arm.acted: sum(run[arm.acted] for run in runs),
        f"{name}_sample_ms": stage_ms(runs, "sample"),
    }
    if arm.gradient_every_s:
        figures[f"{name}_every_s"] = arm.gradient_every_s
    return figures


def perturbed(model: TFLiteFile, fraction: float, rng: np.random.Generator) -> bytes:
    """A model file with ``fraction`` of its uint8 weights moved by one quantization step."""
    new = {}
    for tensor in model.trainable:
        if tensor.dtype != np.uint8:
            continue
        values = model.values(tensor).copy()
        picked = rng.random(tensor.size) < fraction
        values[picked] = np.clip(
            values[picked].astype(np.int16) + rng.choice([-1, 1], picked.sum()), 0, 255
        ).astype(np.uint8)
        new[tensor.index] = values
    return model.patched(new)


def _bench_key(directory: Path) -> tuple[Signer, Path]:
    """The benchmark's own trainer key: its updates are signed and verified, as deployed."""
    private, public = directory / "bench_ed25519.pem", directory / "bench_ed25519.pub"
    return Signer(save_keypair(private, public)), public


def update_chain(
    initial: bytes, count: int, fraction: float, device_id: str, signer: Signer
) -> list[bytes]:
    """``count`` framed qdelta updates, each applying to the result of the one before, signed
    for ``device_id``."""
    rng = np.random.default_rng(0)
    payloads, current = [], initial
    for version in range(count):
        base = TFLiteFile(current)
        target = perturbed(base, fraction, rng)
        body = qdelta.encode(base, {t.index: TFLiteFile(target).values(t) for t in base.trainable})
        msg = Update(
            base_version=version,
            base_sha256=sha256_hex(current),
            new_version=version + 1,
            result_sha256=sha256_hex(target),
        )
        msg = signer.sign(device_id, msg, body)
        payloads.append(encode(msg, device_id="trainer", seq=version, boot="0" * 16, body=body))
        current = target
    return payloads


def swap(
    model: Path,
    source: str,
    *,
    swap_every_s: float,
    fps: float | None,
    duration_s: float,
    rounds: int,
    threads: int,
    update_fraction: float = 0.05,
) -> dict:
    """Paced frames with an update every ``swap_every_s``, against the same paced run without
    updates (the baseline), alternating for ``rounds``."""
    decoded = load_frames(source, 300)
    fps = fps or 1.0 / _period(decoded)
    count = math.ceil(duration_s / swap_every_s) + 1
    runs: dict[str, list[dict]] = {"baseline": [], "swapping": []}
    with tempfile.TemporaryDirectory(prefix="edge-swap-") as tmp:
        signer, public_key = _bench_key(Path(tmp))
        updates = update_chain(model.read_bytes(), count, update_fraction, "bench-0", signer)
        for round_index in range(rounds):
            for name, chain in (("baseline", []), ("swapping", updates)):
                profile = bench_profile(
                    model,
                    Path(tmp) / f"{name}{round_index}",
                    threads=threads,
                    sampling_fps=1.0,
                    bitrate_kbps=200.0,
                    broker=None,
                    public_key=public_key,
                )
                runs[name].append(
                    _paced_round(profile, decoded, fps, duration_s, chain, swap_every_s)
                )
    swapping, baseline = runs["swapping"], runs["baseline"]
    applied = [ms for run in swapping for ms in run["swap_apply_ms"]]
    gaps = _gap_figures(swapping, "")
    without = _gap_figures(baseline, "baseline_")
    return {
        "model": str(model),
        "source": source,
        "fps": fps,
        "frames": int(duration_s * fps),
        "rounds": rounds,
        "swap_every_s": swap_every_s,
        "swaps": sum(run["swaps"] for run in swapping),
        **gaps,
        **without,
        "p99_gap_ratio": gaps["p99_frame_gap_ms"] / without["baseline_p99_frame_gap_ms"],
        "swap_apply_ms": applied,
        "swap_apply_ms_median": statistics.median(applied) if applied else None,
        "update_bytes_median": statistics.median(len(decode(u).body) for u in updates),
    }


def _gap_figures(runs: list[dict], prefix: str) -> dict:
    """Dropped frames, and the median, p99 and worst gap between results of all ``runs``."""
    gaps = np.concatenate([run["gaps_ms"] for run in runs])
    median, p99 = np.percentile(gaps, [50, 99])
    return {
        f"{prefix}dropped_frames": sum(run["dropped_frames"] for run in runs),
        f"{prefix}median_frame_gap_ms": float(median),
        f"{prefix}p99_frame_gap_ms": float(p99),
        f"{prefix}max_frame_gap_ms": float(gaps.max()),
    }


def _paced_round(
    profile: Profile,
    frames: list[Frame],
    fps: float,
    duration_s: float,
    updates: list[bytes],
    every_s: float,
) -> dict:
    results: list[float] = []
    runtime = EdgeRuntime.from_profile(
        profile, connect=False, sinks=[lambda *_: results.append(time.perf_counter())]
    )
    runtime.start()
    camera = PacedCamera(frames, fps, int(duration_s * fps))
    stop = threading.Event()
    sender = threading.Thread(
        target=_send_updates, args=(runtime, updates, every_s, stop), daemon=True
    )
    sender.start()
    runtime.run(camera)
    stop.set()
    sender.join(5)
    applied = [round(s * 1000, 1) for s in runtime.slots.apply_seconds]
    swaps = runtime.counters.get("slots.swaps")
    runtime.shutdown()
    return {
        "swaps": swaps,
        "dropped_frames": camera.dropped,
        "gaps_ms": np.diff(results) * 1000,
        "swap_apply_ms": applied,
    }


def _send_updates(
    runtime: EdgeRuntime, updates: list[bytes], every_s: float, stop: threading.Event
) -> None:
    for payload in updates:
        if stop.wait(every_s):
            return
        runtime.submit_model_message(decode(payload))


class PacedCamera:
    """Frames at a fixed rate, like a camera: frame i exists from start + i / fps; one not
    taken within a period of that is dropped, as a camera with a one-frame buffer drops it."""

    def __init__(self, frames: list[Frame], fps: float, total: int) -> None:
        self._frames = frames
        self._period = 1.0 / fps
        self._total = total
        self.dropped = 0

    def __iter__(self) -> Iterator[Frame]:
        begin = time.perf_counter() + 0.5
        for i in range(self._total):
            due = begin + i * self._period
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            elif now > due + self._period:
                self.dropped += 1
                continue
            yield Frame(i, i * self._period, self._frames[i % len(self._frames)].video)
