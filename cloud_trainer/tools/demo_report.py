"""The demo's report: ``report.json`` (a ``devices`` list), ``report.md`` and
``miou_over_time.png`` (each device's mIoU against the teacher, the pretrained student's on the
same frames dashed, update instants ticked), from the status files the devices wrote."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt
import numpy as np

RECENT_S = 20.0  # the live view's "running" mIoU: the probes of the last 20 s


def read_status(path: Path) -> dict | None:
    """A device's latest status, or None before its first write."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def running_miou(status: dict) -> tuple[float | None, float | None]:
    """Mean mIoU of the device's model and of the pretrained student over the last probes."""
    history = status["history"]
    if not history:
        return None, None
    recent = [h for h in history if h[0] >= history[-1][0] - RECENT_S]
    return float(np.mean([h[2] for h in recent])), float(np.mean([h[3] for h in recent]))


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def device_summary(status: dict) -> dict[str, object]:
    history = status["history"]
    updated = [h for h in history if status["updates"] and h[0] >= status["updates"][0]]
    return {
        "device_id": status["device_id"],
        "video": status["video"],
        "frames": status["frames"],
        "fps": round(status["fps"], 2),
        "updates_applied": status["updates_applied"],
        "model_version": status["model_version"],
        "miou": _mean([h[2] for h in history]),
        "miou_pretrained": _mean([h[3] for h in history]),  # same frames, the model it booted
        "miou_since_first_update": _mean([h[2] for h in updated]),
        "miou_pretrained_since_first_update": _mean([h[3] for h in updated]),
        "uplink_kbps": round(status["uplink_kbps"], 1),
        "downlink_kbps": round(status["downlink_kbps"], 2),
        "probes": len(history),
    }


def write_report(
    out: Path, statuses: list[dict], trainer: dict[str, dict], settings: dict[str, object]
) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "devices": [device_summary(s) for s in statuses],
        "trainer": trainer,
        "settings": settings,
        "files": ["report.md", "report.json", "miou_over_time.png"],
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "report.md").write_text(_markdown(report))
    _plot(out / "miou_over_time.png", statuses)
    return report


def percent(value: float | None, unit: str = "") -> str:
    """A fraction as percent with one decimal, or a dash when there is none."""
    return "–" if value is None else f"{100 * value:.1f}{unit}"


def _markdown(report: dict) -> str:
    settings = report["settings"]
    lines = [
        "# amstream demo",
        "",
        f"{settings['devices']} device(s) for {settings['ran_s']} s on broker "
        f"{settings['broker']}; trainer settings {settings['training']}.",
        "mIoU is against the teacher's labels, probed every 2 s; the pretrained column scores "
        "the model the device booted with on the same frames.",
        "",
        "| device | video | fps | updates | mIoU (%) | pretrained (%) | since 1st update (%) "
        "| pretrained, same frames (%) | up/down (Kbps) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in report["devices"]:
        lines.append(
            f"| {d['device_id']} | {d['video']} | {d['fps']} | {d['updates_applied']} "
            f"| {percent(d['miou'])} | {percent(d['miou_pretrained'])} "
            f"| {percent(d['miou_since_first_update'])} "
            f"| {percent(d['miou_pretrained_since_first_update'])} "
            f"| {d['uplink_kbps']} / {d['downlink_kbps']} |"
        )
    lines += ["", "Plot: `miou_over_time.png`.", ""]
    return "\n".join(lines)


def _plot(path: Path, statuses: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(10, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, status in enumerate(statuses):
        color = colors[i % len(colors)]
        history = np.asarray([h[:1] + h[2:] for h in status["history"]], float).reshape(-1, 3)
        label = f"{status['device_id']} ({status['video']})"
        ax.plot(history[:, 0], 100 * history[:, 1], color=color, label=label)
        ax.plot(history[:, 0], 100 * history[:, 2], color=color, ls=":", lw=1)
        ticks = status["updates"]
        ax.plot(ticks, np.full(len(ticks), -3.0 - 3 * i), "|", ms=8, color=color)
    bottom = -3.0 - 3 * len(statuses)  # room for the update ticks
    ax.set(xlabel="seconds", ylabel="mIoU against the teacher (%)", ylim=(bottom, 100))
    ax.set_title("solid: device's model; dotted: pretrained, same frames; ticks: updates applied")
    if statuses:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
