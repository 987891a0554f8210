"""The evaluation's outputs: ``results.json``, ``results.md`` (seed 002 Table 1's layout, with
the paper's Outdoor Scenes numbers beside ours, Table 2's per-video layout, Table 3's when the
ablation ran) and three plots: mIoU over time with update instants, bandwidth over time, and
the per-frame CDF of the mIoU gain over No Customization (seed 002 Fig. 5).

Everything is rebuilt from the saved runs that score the same frames, so a scheme run on its
own later joins the report.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
import numpy as np

from cloud_trainer.evaluation.config import EvalConfig, size_text
from cloud_trainer.evaluation.names import SchemeName
from cloud_trainer.evaluation.record import SchemeRun
from cloud_trainer.evaluation.runner import (
    ABLATION,
    ABLATION_GAMMAS,
    ABLATION_STRATEGIES,
    FULL_MODEL,
    RUNS,
    VARIANTS,
    StreamInfo,
    ablation_name,
    command_line,
)
from shared_schema.bench_results import machine

TITLES = {
    SchemeName.NO_CUSTOM: "No Customization",
    SchemeName.ONE_TIME: "One-Time",
    SchemeName.REMOTE_TRACKING: "Remote+Tracking",
    SchemeName.JIT: "Just-In-Time",
    SchemeName.AMS: "AMS",
    SchemeName.ORACLE: "Oracle (offline)",
    SchemeName.ORACLE_FLOAT: "Oracle, float32",
}
# Seed 002 Table 1, Outdoor Scenes: mIoU (%), uplink and downlink (Kbps).
PAPER = {
    SchemeName.NO_CUSTOM: (63.68, 0, 0),
    SchemeName.ONE_TIME: (69.73, 63.1, 91.4),
    SchemeName.REMOTE_TRACKING: (69.05, 1949, 54.6),
    SchemeName.JIT: (73.14, 2735, 3109),
    SchemeName.AMS: (74.26, 189, 205),
}
# Seed 002 Table 3: mIoU difference from full-model training (points), and AMS's downlink.
PAPER_TABLE3 = {
    "last": (-5.98, -6.58, -8.98, -10.99),
    "first": (-2.63, -5.54, -8.37, -15.45),
    "random": (-0.21, -0.70, -2.90, -5.29),
    "gradient": (0.13, -0.13, -0.73, -2.87),
}
PAPER_TABLE3_BW = (715, 384, 205, 46)
FILES = ("results.json", "results.md", "miou_over_time.png", "bandwidth.png", "miou_gain_cdf.png")


def load_runs(directory: Path, info: StreamInfo, names: list[str]) -> dict[str, SchemeRun]:
    """The saved runs among ``names`` that scored this stream's frames."""
    runs = {}
    for name in names:
        if (directory / f"{name}.json").is_file():
            run = SchemeRun.load(directory, name)
            if run.signature == info.signature:
                runs[name] = run
    return runs


def write_report(out: Path, config: EvalConfig, info: StreamInfo) -> dict[str, object]:
    runs = load_runs(out / RUNS, info, [s.value for s in SchemeName])
    saved_variants = sorted(p.stem for p in (out / VARIANTS).glob("*.json"))
    variants = load_runs(out / VARIANTS, info, saved_variants)
    ablation_names = [FULL_MODEL] + [
        ablation_name(s, g) for s in ABLATION_STRATEGIES for g in ABLATION_GAMMAS
    ]
    ablation = load_runs(out / ABLATION, info, ablation_names)
    summaries = _summaries(runs, runs, info)
    results = {
        "schemes": summaries,
        "variants": _summaries(variants, runs, info),
        "config": _config(config, info, runs),
        "ablation": {n: r.summary(info.classes, info.videos) for n, r in ablation.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(results, info))
    if runs:
        _plot_miou(out / "miou_over_time.png", runs, info)
        _plot_bandwidth(out / "bandwidth.png", runs)
        _plot_gain_cdf(out / "miou_gain_cdf.png", runs, info)
    return results


def _summaries(
    runs: dict[str, SchemeRun], schemes: dict[str, SchemeRun], info: StreamInfo
) -> dict[str, dict]:
    """Each run's summary, with its per-frame view against No Customization's run and its
    share of the oracle's gain, where ``schemes`` has those runs."""
    summaries = {name: run.summary(info.classes, info.videos) for name, run in runs.items()}
    baseline, oracle = schemes.get(SchemeName.NO_CUSTOM), schemes.get(SchemeName.ORACLE)
    if baseline is None:
        return summaries
    base = baseline.per_frame_miou(info.classes)
    for name, run in runs.items():
        gain = run.per_frame_miou(info.classes) - base
        summaries[name]["frames_better_than_no_custom"] = float(np.mean(gain > 0))
        summaries[name]["frames_worse_than_no_custom"] = float(np.mean(gain < 0))
        if oracle is not None:
            headroom = oracle.per_frame_miou(info.classes).mean() - base.mean()
            share = gain.mean() / headroom if headroom > 0 else float("nan")
            summaries[name]["share_of_oracle_gain"] = float(share)
    return summaries


def _config(config: EvalConfig, info: StreamInfo, runs: dict[str, SchemeRun]) -> dict[str, object]:
    return {
        **config.model_dump(mode="json"),
        "stream": {
            "videos": info.videos,
            "duration_s": info.duration_s,
            "classes": list(info.classes),
            "size": list(info.size),  # (height, width) of the device model and label maps
            **info.signature,
            "rotation_s": config.stream.rotation_s,
            "rounds": config.stream.rounds if config.stream.rotation_s else None,
        },
        "formats": {
            "model_updates": "qdelta (real update bodies, applied with verify_and_apply)",
            "ams_fp16_kbps": "the same updates in seed 002's fp16 + gzip'd mask encoding",
            "segments": f"H.264 at {config.ams.segment_kbps:g} kbps (encode_segment)",
            "full_quality_samples": f"JPEG q{config.tracking.jpeg_quality} at source size",
            "label_maps": f"zstd (level 3) of the {size_text(info.size)} uint8 teacher labels",
        },
        "charge_compute": config.link.charge_compute,
        "command": command_line(),
        "runs": {n: {"command": r.command, "finished": r.finished} for n, r in runs.items()},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _markdown(results: dict, info: StreamInfo) -> str:
    schemes: dict[str, dict] = results["schemes"]
    config = results["config"]
    names = [s for s in SchemeName if s.value in schemes]
    head = "| Dataset | Metric | " + " | ".join(TITLES[s] for s in names) + " |"
    rule = "|---|---|" + "---|" * len(names)
    stream = " + ".join(info.videos)
    lines = [
        "# Evaluation (seed 002 §4)",
        "",
        f"Stream: {stream}, {info.duration_s:.1f} s; scored every "
        f"{config['stream']['eval_stride']} frame(s) over classes {list(info.classes)}. "
        f"Preset `{config['preset']}`; compute charged × {config['charge_compute']:g}; "
        f"links {config['link']['uplink_mbps']:g}/{config['link']['downlink_mbps']:g} Mbps.",
        "",
        "Runs (each scheme's command line):",
        "",
        *[f"- {name}: `{r['command']}` ({r['finished']})" for name, r in config["runs"].items()],
        "",
        "## Table 1 layout: mIoU (%), uplink/downlink (Kbps)",
        "",
        head,
        rule,
        "| this stream | mIoU (%) | " + " | ".join(_pct(schemes[s]["miou"]) for s in names) + " |",
        "| this stream | Up/Down BW (Kbps) | "
        + " | ".join(
            f"{schemes[s]['uplink_kbps']:.1f}/{schemes[s]['downlink_kbps']:.1f}" for s in names
        )
        + " |",
        "| Outdoor Scenes (paper) | mIoU (%) | "
        + " | ".join(f"{PAPER[s][0]:.2f}" if s in PAPER else "–" for s in names)
        + " |",
        "| Outdoor Scenes (paper) | Up/Down BW (Kbps) | "
        + " | ".join(f"{PAPER[s][1]:g}/{PAPER[s][2]:g}" if s in PAPER else "–" for s in names)
        + " |",
        "",
        "## Table 2 layout: mIoU (%) per video",
        "",
        "| Video | " + " | ".join(TITLES[s] for s in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for video in info.videos:
        cells = [_pct(schemes[s]["per_video"][video]) if video in schemes[s]["per_video"] else ""
                 for s in names]  # fmt: skip
        lines.append(f"| {video} | " + " | ".join(cells) + " |")
    lines += ["", "## Per scheme", "", _details(schemes, names), *_targets(schemes)]
    if results["variants"]:
        lines += _variants(results["variants"], schemes, info)
    if results["ablation"]:
        lines += _table3(results["ablation"])
    lines += _settings(config)
    lines += ["", "Plots: `miou_over_time.png`, `bandwidth.png`, `miou_gain_cdf.png`.", ""]
    return "\n".join(lines)


def _settings(config: dict) -> list[str]:
    """What each scheme ran with, in one line each (all of it is in results.json)."""
    ams, one, track, jit = config["ams"], config["one_time"], config["tracking"], config["jit"]
    train = ams["training"]
    crop = size_text(train["resolution"])
    model_size = size_text(config["stream"]["size"])
    kept = size_text(train["frame_size"]) if train["frame_size"] else model_size
    return [
        "",
        "## Settings",
        "",
        f"- AMS: γ {train['gamma']:g}, {train['selection']} selection, K {train['iterations']},"
        f" batch {train['batch_size']} of {crop} crops of {kept} samples, lr {train['lr']:g}"
        f" ({_schedule(train)}), loss over {_loss_classes(train)},"
        f" T_horizon {train['horizon_s']:g} s, T_update {ams['atr']['tau_min_s']:g} s (ATR"
        f" {'on' if ams['atr']['enabled'] else 'off'}), ASR {ams['asr']['min_fps']:g}-"
        f"{ams['asr']['max_fps']:g} fps every {ams['asr']['interval_s']:g} s, segments"
        f" H.264 {ams['segment_kbps']:g} kbps; updates as qdelta bodies; regression gate"
        + (
            f" on ({ams['gate']['holdout']} newest samples held out, margin"
            f" {100 * ams['gate']['margin']:g} points)"
            if ams["gate"]["enabled"]
            else " off"
        )
        + _rebase_setting(ams.get("rebase", {"enabled": False})),
        f"- One-Time: every parameter, {one['iterations']} Adam steps (lr {one['lr']:g}) on the"
        f" 1 fps samples of the first {one['window_s']:g} s, sent once as one qdelta body.",
        f"- Remote+Tracking: {track['sample_fps']:g} fps samples as JPEG q{track['jpeg_quality']};"
        f" labels back as zstd uint8 maps; Farneback at {model_size} (winsize {track['winsize']},"
        f" {track['levels']} levels, {track['iterations']} iterations, poly_n {track['poly_n']},"
        f" poly_sigma {track['poly_sigma']:g}), nearest-neighbour warps.",
        f"- Just-In-Time: threshold {jit['threshold']:g} training mIoU, at most"
        f" {jit['max_updates']} steps per key frame, key frame stride {jit['min_stride_s']:.3f}-"
        f"{jit['max_stride_s']:.3f} s, γ {jit['gamma']:g} gradient-guided, Adam lr"
        f" {jit['lr']:g} (JITNet used momentum SGD), key frames as JPEG q{jit['jpeg_quality']},"
        " updates as qdelta bodies.",
        f"- Oracle (offline): per video, every parameter, {config['oracle']['steps']} Adam steps"
        f" (lr {config['oracle']['lr']:g}) on all of its scored frames' teacher labels, AMS's"
        " crops and batch, scored on the same frames as the int8 file.",
        f"- Device: the student TFLite through LiteRT ({config['threads']} threads), patched"
        " with verify_and_apply from each update's arrival: end of its interval (or its key"
        " frame's arrival) + charged compute + transfer on the downlink.",
    ]


def _schedule(train: dict) -> str:
    warmup = train.get("warmup_steps", 0)
    return train.get("decay", "constant") + (f" after {warmup} warm-up steps" if warmup else "")


def _loss_classes(train: dict) -> str:
    return "the stream's classes" if train.get("class_subset", True) else "all classes"


def _rebase_setting(rebase: dict) -> str:
    if not rebase["enabled"]:
        return "; rebase off."
    return (f"; rebase on (base against the device's model on the {rebase['samples']} newest"
            f" samples, margin {100 * rebase['margin']:g} points).")  # fmt: skip


def _details(schemes: dict[str, dict], names: list[SchemeName]) -> str:
    keys = (
        ("updates", "{:d}"),
        ("bytes_per_update", "{:.0f}"),
        ("ams_fp16_kbps", "{:.1f}"),
        ("full_fp16_kbps", "{:.1f}"),
        ("gradient_kbps", "{:.2f}"),
        ("frames_better_than_no_custom", "{:.1%}"),
        ("frames_worse_than_no_custom", "{:.1%}"),
        ("share_of_oracle_gain", "{:.1%}"),
        ("phases_gated", "{:d}"),
        ("rebases", "{:d}"),
        ("scene_cuts", "{:d}"),
        ("saturated_weights", "{:d}"),
        ("trainer_seconds", "{:.1f}"),
        ("wall_seconds", "{:.1f}"),
        ("frames_scored", "{:d}"),
    )
    rows = ["| | " + " | ".join(TITLES[s] for s in names) + " |", "|---|" + "---|" * len(names)]
    for key, fmt in keys:
        cells = [fmt.format(schemes[s][key]) if key in schemes[s] else "" for s in names]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _targets(schemes: dict[str, dict]) -> list[str]:
    """Issue #13's targets for AMS, each met or missed."""
    ams, base, jit = (schemes.get(s) for s in ("ams", "no_custom", "jit"))
    if ams is None:
        return []
    checks = [
        ("uplink ≤ 250 Kbps", ams["uplink_kbps"] <= 250, f"{ams['uplink_kbps']:.1f}"),
        ("downlink ≤ 225 Kbps", ams["downlink_kbps"] <= 225, f"{ams['downlink_kbps']:.1f}"),
    ]
    if base is not None:
        gain = 100 * (ams["miou"] - base["miou"])
        worst = min((100 * (ams["per_video"][v] - m), v) for v, m in base["per_video"].items())
        better = ams["frames_better_than_no_custom"]
        checks[:0] = [
            ("mIoU ≥ No Customization + 5 points", gain >= 5, f"{gain:+.2f}"),
            ("never below No Customization on a video", worst[0] >= 0,
             f"{worst[0]:+.2f} ({worst[1]})"),
            ("better than No Customization on ≥ 80 % of frames", better >= 0.8,
             f"{better:.1%}"),
        ]  # fmt: skip
    if jit is not None:
        gap = 100 * (ams["miou"] - jit["miou"])
        checks.insert(1, ("mIoU ≥ Just-In-Time", gap >= 0, f"{gap:+.2f}"))
    lines = ["", "## Targets (AMS)", "", "| target | ours | met |", "|---|---|---|"]
    lines += [f"| {what} | {value} | {'yes' if ok else 'NO'} |" for what, ok, value in checks]
    return lines


def _variants(variants: dict[str, dict], schemes: dict[str, dict], info: StreamInfo) -> list[str]:
    """AMS with settings changed, on the same frames: each against AMS and the baselines."""
    ams, base = schemes.get("ams"), schemes.get("no_custom")
    rows = {"AMS (as configured)": ({}, ams)} if ams else {}
    rows |= {name: (v.get("overrides", {}), v) for name, v in variants.items()}
    lines = [
        "",
        "## AMS variants (same frames; points against No Customization)",
        "",
        "| variant | settings changed | mIoU (%) | vs No Cust. | "
        + " | ".join(info.videos)
        + " | frames better | up/down (Kbps) | gated phases | rebases |",
        "|---|---|---|---|" + "---|" * len(info.videos) + "---|---|---|---|",
    ]
    for name, (overrides, run) in rows.items():
        changed = ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()) or "–"

        def versus(video: str | None, run: dict = run) -> str:
            if base is None:
                return ""
            ours = run["miou"] if video is None else run["per_video"].get(video)
            theirs = base["miou"] if video is None else base["per_video"].get(video)
            return "" if ours is None or theirs is None else f"{100 * (ours - theirs):+.2f}"

        better = run.get("frames_better_than_no_custom")
        cells = [
            name, changed, _pct(run["miou"]), versus(None), *[versus(v) for v in info.videos],
            "" if better is None else f"{better:.1%}",
            f"{run['uplink_kbps']:.1f}/{run['downlink_kbps']:.1f}",
            str(run.get("phases_gated", "")),
            str(run.get("rebases", "")),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _table3(ablation: dict[str, dict]) -> list[str]:
    full = ablation.get(FULL_MODEL)
    heads = " | ".join(f"{round(100 * g)}%" for g in ABLATION_GAMMAS)
    lines = [
        "",
        "## Table 3 layout: mIoU difference from full-model training (points); paper in ()",
        "",
        f"| Strategy | {heads} |",
        "|---|" + "---|" * len(ABLATION_GAMMAS),
    ]
    for selection in reversed(ABLATION_STRATEGIES):
        cells = []
        for gamma, paper in zip(ABLATION_GAMMAS, PAPER_TABLE3[selection.value], strict=True):
            run = ablation.get(ablation_name(selection, gamma))
            ours = f"{100 * (run['miou'] - full['miou']):+.2f}" if run and full else "–"
            cells.append(f"{ours} ({paper:+.2f})")
        lines.append(f"| {selection.value} | " + " | ".join(cells) + " |")
    bw = []
    for gamma, paper in zip(ABLATION_GAMMAS, PAPER_TABLE3_BW, strict=True):
        run = ablation.get(ablation_name(ABLATION_STRATEGIES[0], gamma))
        bw.append(f"{run['downlink_kbps']:.1f} ({paper})" if run else f"– ({paper})")
    lines.append("| BW (Kbps), gradient | " + " | ".join(bw) + " |")
    if full:
        lines.append(f"\nFull model: {100 * full['miou']:.2f} % mIoU at "
                     f"{full['downlink_kbps']:.1f} Kbps (paper: 3302 Kbps).")  # fmt: skip
    return lines


def _color(name: str) -> str:
    """One colour per scheme in every plot."""
    return f"C{list(SchemeName).index(SchemeName(name))}"


def _video_starts(run: SchemeRun) -> list[float]:
    video = np.asarray(run.frame_video)
    t = np.asarray(run.frame_t)
    return [float(t[np.argmax(video == v)]) for v in np.unique(video)[1:]]


def _plot_miou(path: Path, runs: dict[str, SchemeRun], info: StreamInfo) -> None:
    fig, ax = plt.subplots(figsize=(11, 5))
    for i, (name, run) in enumerate(runs.items()):
        t, scores = np.asarray(run.frame_t), run.per_frame_miou(info.classes)
        # ~5 s, never more frames than there are ("same" would return the kernel's length)
        window = min(len(t), max(1, round(len(t) / max(t[-1] - t[0], 1e-9) * 5)))
        kernel = np.ones(window)  # a centred mean, over fewer frames at the two ends
        smooth = np.convolve(scores, kernel, "same") / np.convolve(np.ones(len(t)), kernel, "same")
        ax.plot(t, 100 * smooth, lw=1.2, color=_color(name), label=TITLES[SchemeName(name)])
        arrived = [u for u in run.updates if u <= t[-1]]
        ax.plot(arrived, np.full(len(arrived), -3 - 3 * i), "|", ms=7, color=_color(name))
        rebased = run.extra.get("rebased_at", [])
        ax.plot(rebased, np.full(len(rebased), -3 - 3 * i), "v", ms=6, color=_color(name))
    for start in _video_starts(next(iter(runs.values()))):
        ax.axvline(start, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="virtual time (s)", ylabel="mIoU (%), ~5 s mean", ylim=(-3 - 3 * len(runs), 100))
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("mIoU over time; ticks below: updates taking effect (triangles: AMS rebased);"
                 " dashed: next video")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _legend(ax: plt.Axes, **kwargs: object) -> None:
    """A legend where something was drawn (No Customization alone sends nothing)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, **kwargs)


def _plot_bandwidth(path: Path, runs: dict[str, SchemeRun]) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    duration = next(iter(runs.values())).duration_s
    bin_s = max(5.0, round(duration / 40))  # wide enough to average segments out
    edges = np.append(np.arange(0.0, duration, bin_s), duration)
    for name, run in runs.items():
        for ax, events in zip(axes, (run.uplink, run.downlink), strict=True):
            if not events:
                continue
            times, sizes = zip(*events, strict=True)
            nbytes, _ = np.histogram(times, bins=edges, weights=sizes)
            kbps = nbytes * 8 / np.diff(edges) / 1000
            ax.stairs(kbps, edges, color=_color(name), label=TITLES[SchemeName(name)])
    for ax, what in zip(axes, ("uplink", "downlink"), strict=True):
        ax.set(ylabel=f"{what} (Kbps)", yscale="log")
        _legend(ax, loc="upper right")
    axes[1].set_xlabel(f"virtual time (s), {bin_s:g} s bins")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_gain_cdf(path: Path, runs: dict[str, SchemeRun], info: StreamInfo) -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    baseline = runs.get(SchemeName.NO_CUSTOM)
    if baseline is not None:
        base = baseline.per_frame_miou(info.classes)
        for name, run in runs.items():
            if name == SchemeName.NO_CUSTOM:
                continue
            gain = np.sort(100 * (run.per_frame_miou(info.classes) - base))
            cdf = np.arange(1, len(gain) + 1) / len(gain)
            ax.plot(gain, cdf, color=_color(name), label=TITLES[SchemeName(name)])
        ax.axvline(0, color="grey", lw=0.8)
        _legend(ax)
    ax.set(xlabel="mIoU gain over No Customization (points), per frame", ylabel="CDF")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
