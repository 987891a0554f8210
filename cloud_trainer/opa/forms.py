"""Which form the elastic student takes on the device, measured (issue 16: "choose and justify
the form by measurement"): one file whose sub-networks run as a pioneer then a tail (the form
built, with subnet inheritance), the same file with each sub-network whole in one subgraph, and
one file per sub-network. Latency on frames of a real video, the plain student in the same run as
the baseline; load time and resident memory of each form in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cloud_trainer.opa.elastic import ElasticLayout, PioneerHead, elastic_model
from edge_runtime.opa.subnets import ElasticModel, head_key, whole_key

# Run in a fresh interpreter per form: what loading it costs, alone (RSS in kB from /proc).
_LOAD_PROBE = r"""
import json, sys, time
from ai_edge_litert.interpreter import Interpreter
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
paths, keys = json.loads(sys.argv[1]), json.loads(sys.argv[2])
before = rss(); start = time.perf_counter()
held = []
for path in paths:
    interpreter = Interpreter(model_path=path, num_threads=2)
    if keys:
        held += [interpreter.get_signature_runner(k) for k in keys]
        for runner in held[-len(keys):]:
            runner._interpreter_wrapper.AllocateTensors(runner._subgraph_index)
    else:
        interpreter.allocate_tensors()
    held.append(interpreter)
print(json.dumps({"load_s": time.perf_counter() - start, "rss_kb": rss() - before}))
"""


def _paired_times(
    calls: dict[tuple[str, str], Callable[[np.ndarray], object]], frames: list[np.ndarray]
) -> dict[tuple[str, str], list[float]]:
    """Seconds of every call on every frame, the calls in turn on each frame."""
    for call in calls.values():
        call(frames[0])  # the first call allocates and warms up
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for frame in frames:
        for key, call in calls.items():
            start = time.perf_counter()
            call(frame)
            times[key].append(time.perf_counter() - start)
    return times


def _resized(rgb: np.ndarray, side: int) -> np.ndarray:
    rows = np.linspace(0, rgb.shape[0] - 1, side).round().astype(int)
    return np.ascontiguousarray(rgb[rows][:, rows][None])


def _load(paths: list[Path], keys: list[str]) -> dict[str, float]:
    args = [json.dumps([str(p) for p in paths]), json.dumps(keys)]
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_PROBE, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_forms(
    student: bytes, head: PioneerHead, frames: list[np.ndarray], layout: ElasticLayout
) -> dict[str, object]:
    """The three forms' sizes, per-sub-network latency, load time and memory."""
    from ai_edge_litert.interpreter import Interpreter

    whole_layout = ElasticLayout(**{**vars(layout), "whole_subnets": True})
    split, both = elastic_model(student, head, layout), elastic_model(student, head, whole_layout)
    model = ElasticModel.of(split)
    interpreter = Interpreter(model_content=both, num_threads=2)
    plain = Interpreter(model_content=student, num_threads=2)
    plain.allocate_tensors()
    plain_input = plain.get_input_details()[0]["index"]

    def run_plain(rgb: np.ndarray) -> None:
        plain.set_tensor(plain_input, rgb[None])
        plain.invoke()

    # Every measured call on each frame in turn, paired: the machine's drift hits them alike.
    calls: dict[tuple[str, str], Callable[[np.ndarray], object]] = {("student", "plain"): run_plain}
    for subnet in model.subnets:
        r, d = subnet.resolution, subnet.depth
        pioneer = interpreter.get_signature_runner(subnet.pioneer.key)
        tail = interpreter.get_signature_runner(subnet.tail.key)
        head_runner = interpreter.get_signature_runner(head_key(r))
        whole = interpreter.get_signature_runner(whole_key(r, d))
        features = pioneer(image=_resized(frames[0], r))["features"]
        calls[subnet.name, "split"] = lambda f, p=pioneer, t=tail, r=r: t(
            features=p(image=_resized(f, r))["features"]
        )
        calls[subnet.name, "whole"] = lambda f, w=whole, r=r: w(image=_resized(f, r))
        calls[subnet.name, "pioneer"] = lambda f, p=pioneer, r=r: p(image=_resized(f, r))
        calls[subnet.name, "head"] = lambda _, h=head_runner, x=features: h(features=x)
    times = _paired_times(calls, frames)
    plain_ms = round(1000 * float(np.median(times["student", "plain"])), 2)
    subnets = {}
    for subnet in model.subnets:
        row: dict[str, object] = {"macs": subnet.macs}
        for part in ("split", "whole", "pioneer", "head"):
            row[f"{part}_ms"] = round(1000 * float(np.median(times[subnet.name, part])), 2)
        ratio = np.array(times[subnet.name, "split"]) / np.array(times[subnet.name, "whole"])
        row["split_over_whole"] = round(float(np.median(ratio)), 3)  # per frame, paired
        subnets[subnet.name] = row
    with tempfile.TemporaryDirectory() as tmp:
        loads = _load_forms(Path(tmp), student, head, layout, model, split)
    return {
        "layout": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(layout).items()},
        "frames": len(frames),
        "bytes": {"student": len(student), "elastic": len(split), "with_whole": len(both)},
        "plain_student_ms": plain_ms,
        "subnets": subnets,
        "load": loads,
    }


def _load_forms(
    tmp: Path,
    student: bytes,
    head: PioneerHead,
    layout: ElasticLayout,
    model: ElasticModel,
    split: bytes,
) -> dict[str, dict[str, float]]:
    (tmp / "student.tflite").write_bytes(student)
    (tmp / "elastic.tflite").write_bytes(split)
    keys = [*model.pioneers.keys()]
    split_keys = [model.pioneers[r].key for r in keys] + [head_key(r) for r in keys]
    split_keys += [s.tail.key for s in model.subnets]
    files = []
    for subnet in model.subnets:
        one = ElasticLayout(
            resolutions=(subnet.resolution,),
            depths=(subnet.depth,),
            pioneer_stride=layout.pioneer_stride,
            whole_subnets=True,
        )
        path = tmp / f"{subnet.name}.tflite"
        path.write_bytes(elastic_model(student, head, one))
        files.append((path, whole_key(subnet.resolution, subnet.depth)))
    return {
        "plain_student": _load([tmp / "student.tflite"], []),
        "one_file_split": _load([tmp / "elastic.tflite"], split_keys),
        # One interpreter per file, each holding its sub-network whole (and its own weights).
        "file_per_subnet": _aggregate([_load([p], [k]) for p, k in files]),
    }


def _aggregate(loads: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(x[k] for x in loads), 3) for k in loads[0]}
