"""``edge-runtime bench --opa-budget-ms``: OPA against fixed sub-networks under background load
(seed 004 §V; issue 16's measurement).

The same decoded frames go, frame by frame, through every fixed sub-network, the static
latency-table choice (Dynamic-OFA-like: the largest sub-network whose unloaded latency fits the
budget) and OPA, at each number of busy background processes (the paper's background
applications); each scheme's share of frames over the budget, mean latency and mIoU against the
teacher's labels of the same frames. OPA runs twice: with eq. 2's costs in MACs (the paper's)
and in the sub-networks' unloaded latencies measured at the start (what the runtime uses).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge_runtime.backends.litert import LiteRtConfig
from edge_runtime.opa.runner import ElasticRunner, FrameChoice, OpaSelection, unloaded_latency
from edge_runtime.opa.selector import Selector, SelectorError, read_selector
from edge_runtime.opa.subnets import Subnet
from edge_runtime.sources import open_source
from shared_schema.metrics import ClassSubset, miou

_BUSY = "while True: pass"  # one core's worth of a background application
_CALIBRATION_FRAMES = 16


@contextmanager
def background_load(processes: int) -> Iterator[list[subprocess.Popen]]:
    """`processes` busy loops running beside the benchmark."""
    busy = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(processes)]
    try:
        time.sleep(0.5 if busy else 0.0)  # let the scheduler spread them
        yield busy
    finally:
        for process in busy:
            process.kill()
            process.wait()


def _timed(run: Callable[..., np.ndarray], *args: object) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    labels = run(*args)
    return labels, time.perf_counter() - started


class _Tally:
    def __init__(self) -> None:
        self.latency: list[float] = []
        self.miou: list[float] = []
        self.choices: list[FrameChoice] = []

    def summary(self, budget_s: float) -> dict[str, object]:
        latency = np.array(self.latency)
        out: dict[str, object] = {
            "over_budget": round(float((latency > budget_s).mean()), 4),
            "mean_ms": round(1000 * float(latency.mean()), 2),
            "p99_ms": round(1000 * float(np.percentile(latency, 99)), 2),
            "miou": round(float(np.mean(self.miou)), 4),
        }
        if self.choices:
            actual = np.array([c.actual_s for c in self.choices])
            mean = actual.mean()
            for part in ("pioneer", "selection", "overhead"):
                spent = np.mean([getattr(c, f"{part}_s") for c in self.choices])
                out[f"{part}_share"] = round(float(spent / mean), 4)
                out[f"{part}_ms"] = round(1000 * float(spent), 3)
            predicted = np.array([c.predicted_s for c in self.choices])
            out["latency_prediction_error"] = round(
                float(np.median(np.abs(predicted - actual) / actual)), 4
            )
            names = [c.subnet for c in self.choices]
            out["chosen"] = {n: names.count(n) for n in sorted(set(names))}
        return out


def opa(
    model: Path,
    source: str,
    teacher: Path,
    *,
    budget_ms: float,
    loads: Sequence[int] = (0, 1, 2),
    frames: int = 150,
    start: int = 0,
    threads: int = 2,
) -> dict[str, object]:
    """The benchmark; see the module docstring."""
    data = model.read_bytes()
    runner = ElasticRunner(data, threads)
    try:
        selector, refused = read_selector(runner.model), None
    except SelectorError as exc:
        selector, refused = None, str(exc)
    with open_source(source) as decoded:
        picked = zip(range(start + frames), decoded, strict=False)
        rgb = [f.rgb(513, 513) for i, f in picked if i >= start]
    if not rgb:
        raise ValueError(f"{source}: no frames from frame {start}")
    with LiteRtConfig(threads=threads).open(teacher.read_bytes()) as labeller:
        truth = [labeller.infer(f) for f in rgb]
    subset = ClassSubset(runner.model.file.num_classes)
    for labels in truth:
        subset.observe(labels)
    unloaded, unloaded_pioneers = unloaded_latency(runner, rgb[:_CALIBRATION_FRAMES])
    budget_s = budget_ms / 1000
    by_name = {s.name: s for s in runner.model.subnets}
    fitting = [s for s in runner.model.subnets if unloaded[s.name] <= budget_s]
    table = max(fitting, key=lambda s: unloaded[s.name], default=runner.model.smallest)
    levels = {}
    for load in loads:
        with background_load(load):
            costs = (lambda s: unloaded[s.name], unloaded_pioneers.__getitem__)
            levels[str(load)] = _level(runner, selector, rgb, truth, subset.classes, budget_s,
                                       costs, table)  # fmt: skip
    return {
        "model": str(model),
        "source": source,
        "frames": len(rgb),
        "start_frame": start,
        "budget_ms": budget_ms,
        "selector": "refused: " + refused if refused else ("shipped" if selector else "none"),
        "unloaded_ms": {n: round(1000 * t, 2) for n, t in unloaded.items()},
        "unloaded_pioneer_ms": {r: round(1000 * t, 2) for r, t in unloaded_pioneers.items()},
        "macs": {n: s.macs for n, s in by_name.items()},
        "static_table_choice": table.name,
        "loads": levels,
        "summary": _summary(levels),
    }


def _level(
    runner: ElasticRunner,
    selector: Selector | None,
    rgb: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    classes: tuple[int, ...],
    budget_s: float,
    costs: tuple,
    table: Subnet,
) -> dict[str, dict[str, object]]:
    fixed = {f"fixed:{s.name}": s for s in runner.model.subnets}
    opa_schemes = {
        "opa": OpaSelection(runner, selector, budget_s, costs),
        "opa:macs": OpaSelection(runner, selector, budget_s),
    }
    tallies = {name: _Tally() for name in [*fixed, "static_table", *opa_schemes]}
    for frame, labels in zip(rgb, truth, strict=True):
        for name, subnet in fixed.items():
            out, seconds = _timed(runner.run, subnet, frame)
            tallies[name].latency.append(seconds)
            tallies[name].miou.append(miou(out, labels, classes))
        # The static choice is one fixed sub-network: the same numbers, tallied again.
        tallies["static_table"].latency.append(tallies[f"fixed:{table.name}"].latency[-1])
        tallies["static_table"].miou.append(tallies[f"fixed:{table.name}"].miou[-1])
        for name, selection in opa_schemes.items():
            out, choice = selection.infer(frame)
            tallies[name].latency.append(choice.actual_s)
            tallies[name].miou.append(miou(out, labels, classes))
            tallies[name].choices.append(choice)
    return {name: tally.summary(budget_s) for name, tally in tallies.items()}


def _summary(levels: dict[str, dict[str, dict[str, object]]]) -> dict[str, object]:
    """Per load: OPA and the static table against the best fixed sub-network at or below 1 %
    over budget at that load (an oracle that knows the load), and against the one a device
    that does not know its load would be given: the best that keeps the budget at the heaviest
    load measured (where none does, the one that misses it least)."""
    heaviest = levels[max(levels, key=int)]
    fixed = {n: s for n, s in heaviest.items() if n.startswith("fixed:")}
    safe = max(_within_budget(heaviest), key=lambda n: fixed[n]["miou"], default=None)
    if safe is None:
        safe = min(fixed, key=lambda n: (fixed[n]["over_budget"], -float(fixed[n]["miou"])))
    out: dict[str, object] = {"fixed_for_heaviest_load": safe}
    for load, schemes in levels.items():
        within = _within_budget(schemes)
        best = max(within, key=lambda n: within[n]["miou"], default=None)
        row: dict[str, object] = {"best_fixed_within_budget": best}
        for scheme in ("opa", "opa:macs", "static_table"):
            s = schemes[scheme]
            row[scheme] = {
                "over_budget": s["over_budget"],
                "miou": s["miou"],
                "gain_over_best_fixed": _points(s, schemes.get(best)),
                "gain_over_fixed_for_heaviest_load": _points(s, schemes[safe]),
            }
        out[load] = row
    first = levels[next(iter(levels))]
    full = next(n for n in first if n.startswith("fixed:"))
    out["opa_vs_full_unloaded_points"] = _points(first["opa"], first[full])
    return out


def _within_budget(schemes: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """The fixed sub-networks at or below 1 % of frames over budget."""
    fixed = {n: s for n, s in schemes.items() if n.startswith("fixed:")}
    return {n: s for n, s in fixed.items() if float(s["over_budget"]) <= 0.01}


def _points(scheme: dict[str, object], baseline: dict[str, object] | None) -> float | None:
    """mIoU points of `scheme` over `baseline` (None without one)."""
    if baseline is None:
        return None
    return round(100 * (float(scheme["miou"]) - float(baseline["miou"])), 2)
