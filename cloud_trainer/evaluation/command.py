"""``cloud-trainer evaluate``: the five schemes of seed 002 §4.1 over one stream (SPEC §7)."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_trainer.evaluation.names import (
    DEFAULT_SCHEMES,
    FLEET_SCHEMES,
    ONEADAPT_KNOBS,
    PRESETS,
    UPLINK_SCHEMES,
    SchemeName,
)
from shared_schema.config_files import find_shared_dir

if TYPE_CHECKING:
    from cloud_trainer.evaluation.config import EvalConfig, Variant
    from edge_runtime.profile import OneAdaptSection

_STUDENT = "models/coral/deeplabv3_mnv2_dm05_pascal_quant.tflite"
_TEACHER = "models/coral/deeplabv3_mnv2_pascal_quant.tflite"


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="trace-driven evaluation of AMS against the baselines on real videos",
        description=(
            "Replay the videos back to back under a virtual clock through the real sampler, "
            "H.264 segments, teacher, training phases, update bodies and patched TFLite "
            "student; score every evaluated frame against the teacher; write results.json, "
            "results.md and plots to --out. Schemes run separately merge into one report."
        ),
    )
    parser.add_argument("--video", action="append", required=True, type=Path,
                        help="a video; repeat to concatenate several into one stream")  # fmt: skip
    parser.add_argument("--schemes", default=",".join(DEFAULT_SCHEMES),
                        help="comma-separated, from: " + ", ".join(SchemeName)
                        + "; an empty list only rebuilds the report from saved runs")  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--preset", choices=PRESETS, default="quick")
    parser.add_argument("--eval-stride", type=int, help="score every k-th frame")
    parser.add_argument("--clip", type=float, help="seconds kept from the start of each video")
    parser.add_argument("--rotation", type=float, metavar="SECONDS",
                        help="recurring scenes: each video's next SECONDS in turn")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="how many times --rotation goes round")
    parser.add_argument("--charge-compute", type=float, metavar="F",
                        help="add measured trainer compute × F before replies leave")  # fmt: skip
    parser.add_argument("--uplink-mbps", type=float)
    parser.add_argument("--downlink-mbps", type=float)
    parser.add_argument("--jit-threshold", type=float, help="Just-In-Time's accuracy threshold")
    parser.add_argument(
        "--ablation",
        choices=["selection"],
        help="also sweep AMS's γ and selection strategy (seed 002 Table 3)",
    )
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="also run AMS with these settings changed, keys dotted under the"
                        " AMS settings (e.g. lr3e-4:training.lr=3e-4, nogate:gate.enabled=false);"
                        " repeat for more; saved under variants/")  # fmt: skip
    parser.add_argument("--fleet", type=int, metavar="N",
                        help="N devices, each on its own --rotation of the videos, on one"
                        " trainer of --budget training seconds per second; --schemes from: "
                        + ", ".join(FLEET_SCHEMES))  # fmt: skip
    parser.add_argument("--budget", type=float, help="the fleet trainer's training s per s")
    parser.add_argument(
        "--step-s", type=float, help="what one training step costs the fleet's trainer"
    )
    parser.add_argument("--uplink", action="store_true",
                        help="OneAdapt's uplink knobs against the fixed configuration, "
                        "AWStream-style profiling and a bitrate sweep; --schemes from: "
                        + ", ".join(UPLINK_SCHEMES))  # fmt: skip
    parser.add_argument("--lam", metavar="L,L,...",
                        help="--uplink: AWStream's λ values (the accuracy one Kbps is worth),"
                        " a run each")  # fmt: skip
    parser.add_argument("--oneadapt-lam", metavar="L,L,...",
                        help="--uplink: OneAdapt's λ values, a run each")  # fmt: skip
    parser.add_argument("--oneadapt-knobs", metavar="K,K,...",
                        help="--uplink: the knobs OneAdapt adapts, from: "
                        + ", ".join(ONEADAPT_KNOBS) + " (default: quality)")  # fmt: skip
    parser.add_argument("--oracle-steps", type=int, help="Adam steps of the oracle per video")
    parser.add_argument("--threads", type=int, help="LiteRT threads (teacher, device)")
    parser.add_argument("--cache-dir", type=Path, help="label cache (default: ~/.cache/amstream)")
    parser.add_argument("--student", type=Path, help=f"default: <shared>/{_STUDENT}")
    parser.add_argument("--teacher", type=Path, help=f"default: <shared>/{_TEACHER}")
    parser.set_defaults(func=evaluate)
    return parser


def build_config(args: argparse.Namespace) -> EvalConfig:
    from cloud_trainer.evaluation.config import EvalConfig, preset

    shared = find_shared_dir()
    student, teacher = args.student, args.teacher
    if student is None or teacher is None:
        if shared is None:
            raise SystemExit("error: shared data not found: pass --student and --teacher")
        student = student or shared / _STUDENT
        teacher = teacher or shared / _TEACHER
    config = preset(args.preset, student, teacher)
    stream = {k: v for k, v in (("eval_stride", args.eval_stride), ("clip_s", args.clip),
                                ("rotation_s", args.rotation), ("rounds", args.rounds))
              if v is not None}  # fmt: skip
    link = {k: v for k, v in (("charge_compute", args.charge_compute),
                              ("uplink_mbps", args.uplink_mbps),
                              ("downlink_mbps", args.downlink_mbps)) if v is not None}  # fmt: skip
    update: dict[str, object] = {
        "stream": config.stream.model_copy(update=stream),
        "link": config.link.model_copy(update=link),
    }
    if args.jit_threshold is not None:
        update["jit"] = config.jit.model_copy(update={"threshold": args.jit_threshold})
    if args.threads is not None:
        update["threads"] = args.threads
    if args.oracle_steps is not None:
        update["oracle"] = config.oracle.model_copy(update={"steps": args.oracle_steps})
    # model_copy does not validate: round-trip so a bad override is refused here, by name
    return EvalConfig.model_validate(config.model_copy(update=update).model_dump())


def parse_schemes(text: str) -> list[SchemeName]:
    try:
        return [SchemeName(s.strip()) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise SystemExit(f"error: --schemes: {exc}; choose from {', '.join(SchemeName)}") from exc


def evaluate(args: argparse.Namespace) -> int:
    from cloud_trainer.evaluation.config import Variant
    from cloud_trainer.evaluation.report import write_report
    from cloud_trainer.evaluation.runner import RUNS, Evaluation
    from cloud_trainer.evaluation.schemes import SCHEMES

    config = build_config(args)
    if args.fleet:
        return evaluate_fleet(args, config)
    if args.uplink:
        return evaluate_uplink(args, config)
    schemes = parse_schemes(args.schemes)
    variants = [Variant.parse(text, config.ams) for text in args.variant]
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # a line per training phase would tear the progress bars apart
        logging.getLogger("cloud_trainer.session").setLevel(logging.WARNING)
    evaluation = Evaluation(config, args.video, args.out, _cache_dir(args))
    with evaluation.progress:
        info = evaluation.stream_info()
        for name in schemes:
            evaluation.run(name.value, SCHEMES[name], args.out / RUNS)
        for variant in variants:
            evaluation.variant(variant)
        if args.ablation:
            evaluation.ablation()
    results = write_report(args.out, config, info)
    for name, summary in results["schemes"].items():
        print(
            f"{name:>16}: mIoU {100 * summary['miou']:6.2f} %  up {summary['uplink_kbps']:8.1f}"
            f" Kbps  down {summary['downlink_kbps']:8.1f} Kbps  updates {summary['updates']}"
        )
    for name, summary in results["variants"].items():
        gated = summary.get("phases_gated", 0)
        print(f"{'ams:' + name:>16}: mIoU {100 * summary['miou']:6.2f} %  down"
              f" {summary['downlink_kbps']:8.1f} Kbps  gated {gated}")  # fmt: skip
    print(f"results in {args.out}")
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    return args.cache_dir or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "amstream", "labels"
    )


def _fleet_variant(args: argparse.Namespace, config: EvalConfig) -> Variant | None:
    """With --fleet, one --variant sets the AMS settings every scheme of the fleet runs
    with (e.g. the devices' scene cuts)."""
    from cloud_trainer.evaluation.config import Variant

    if len(args.variant) > 1:
        raise SystemExit("error: --variant: with --fleet give one: it sets the AMS settings"
                         " of every scheme")  # fmt: skip
    return Variant.parse(args.variant[0], config.ams) if args.variant else None


def _mode_schemes(args: argparse.Namespace, allowed: tuple[str, ...], flag: str) -> list[str]:
    """The schemes ``--schemes`` names for a mode of its own (``flag``): all of ``allowed``
    unless told; a name outside them is refused, with the choices."""
    if args.schemes == ",".join(DEFAULT_SCHEMES):
        return list(allowed)
    schemes = [s.strip() for s in args.schemes.split(",")]
    unknown = [s for s in schemes if s not in allowed]
    if unknown:
        raise SystemExit(f"error: --schemes: {', '.join(unknown)}: with {flag} choose from"
                         f" {', '.join(allowed)}")  # fmt: skip
    return schemes


def _floats(values: str | None, flag: str) -> tuple[float, ...] | None:
    """``L,L,...`` as numbers; anything else is the flag's one-line error."""
    if values is None:
        return None
    try:
        return tuple(float(v) for v in values.split(","))
    except ValueError:
        raise SystemExit(f"error: {flag}: {values}: write numbers separated by commas,"
                         " e.g. 0.1,0.16") from None  # fmt: skip


def _knob_set(names: str) -> OneAdaptSection:
    """The device's [oneadapt] adapting ``names`` (quality always; regions on a 4x4 grid)."""
    from edge_runtime.profile import OneAdaptSection

    chosen = {n.strip() for n in names.split(",")}
    unknown = chosen - set(ONEADAPT_KNOBS)
    if unknown or "quality" not in chosen:
        raise SystemExit(f"error: --oneadapt-knobs: {names}: choose from "
                         f"{', '.join(ONEADAPT_KNOBS)}, quality among them")  # fmt: skip
    grid = 4 if "regions" in chosen else 0
    return OneAdaptSection(enabled=True, resolution="resolution" in chosen, roi_cols=grid,
                           roi_rows=grid)  # fmt: skip


def _run_meta(commit: str | None, **extra: object) -> dict[str, object]:
    """What a report says of its run: the command, what it ran on, when, which code."""
    from cloud_trainer.evaluation.runner import command_line
    from shared_schema.bench_results import machine

    return {"command": command_line(), **extra,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": commit, "machine": machine()}  # fmt: skip


def evaluate_uplink(args: argparse.Namespace, config: EvalConfig) -> int:
    from cloud_trainer.evaluation.cache import LabelCache
    from cloud_trainer.evaluation.uplink import (
        Uplink,
        UplinkSettings,
        run_uplink,
        write_uplink_report,
    )
    from cloud_trainer.oneadapt.dnngrad import DnnGrad
    from cloud_trainer.student import import_tflite
    from cloud_trainer.teacher import TeacherConfig, load_teacher
    from shared_schema.bench_results import git_commit

    commit = git_commit()  # of the code that runs: the checkout may move on meanwhile
    schemes = _mode_schemes(args, UPLINK_SCHEMES, "--uplink")
    given = {"awstream_lams": _floats(args.lam, "--lam"), "clip_s": args.clip,
             "oneadapt_lams": _floats(args.oneadapt_lam, "--oneadapt-lam")}  # fmt: skip
    if args.oneadapt_knobs is not None:
        given["knobs"] = _knob_set(args.oneadapt_knobs)
    settings = UplinkSettings(**{k: v for k, v in given.items() if v is not None})
    teacher_model = config.teacher_model.read_bytes()
    teacher = load_teacher(TeacherConfig(model=config.teacher_model, threads=config.threads))
    labels = LabelCache(_cache_dir(args), teacher_model, teacher.label)
    up = Uplink(labels, DnnGrad(import_tflite(teacher_model)), settings,
                teacher.label)  # fmt: skip
    runs = run_uplink(up, args.video, schemes)
    meta = _run_meta(commit, videos=[v.name for v in args.video])
    result = write_uplink_report(args.out, up, runs, meta)
    for name, s in result["schemes"].items():
        cosine = "" if s["cosine_mean"] is None else f"  cos {s['cosine_mean']:.2f}"
        print(f"{name:>16}: up {s['uplink_kbps']:7.1f} Kbps  accuracy {100 * s['accuracy']:6.2f}"
              f" %  extra compute {s['extra_compute_s']:6.1f} s{cosine}")  # fmt: skip
    print(f"results in {args.out}")
    return 0


def evaluate_fleet(args: argparse.Namespace, config: EvalConfig) -> int:
    from cloud_trainer.evaluation.fleet import Fleet, FleetSettings, summarise, write_fleet_report
    from cloud_trainer.evaluation.runner import Evaluation
    from shared_schema.bench_results import git_commit

    commit = git_commit()  # of the code that runs: the checkout may move on meanwhile
    given = {"devices": args.fleet, "budget": args.budget, "step_s": args.step_s}
    settings = FleetSettings(**{k: v for k, v in given.items() if v is not None})
    schemes = _mode_schemes(args, FLEET_SCHEMES, "--fleet")
    variant = _fleet_variant(args, config)
    if variant is not None:
        config = config.model_copy(update={"ams": variant.settings})
    if config.stream.rotation_s is None:  # a fleet replays rotations: 30 s unless told
        config = config.model_copy(update={"stream": config.stream.model_copy(
            update={"rotation_s": 30.0})})  # fmt: skip
    evaluation = Evaluation(config, args.video, args.out, _cache_dir(args))
    fleet = Fleet(evaluation, args.video, settings)
    classes = fleet.classes()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {name: fleet.run(name, args.out) for name in schemes}
    summaries = summarise(runs, fleet.streams, classes)
    for name, s in summaries.items():
        back, gain = s["time_to_accuracy_return_s"], s.get("time_to_gain_return_s")
        print(f"{name:>11}: mIoU {100 * s['miou']:6.2f} %  on a return: time to accuracy"
              f" {'–' if back is None else f'{back:.1f}'} s, to gain"
              f" {'–' if gain is None else f'{gain:.1f}'} s  down {s['downlink_kbps']:.1f} Kbps"
              f" per device  training {sum(s['training_s']):.0f} s")  # fmt: skip
    stream = {"rotation_s": config.stream.rotation_s, "rounds": config.stream.rounds,
              "videos": [v.name for v in args.video], "classes": list(classes)}  # fmt: skip
    meta = _run_meta(commit, fleet=settings.model_dump(), stream=stream,
                     variant=None if variant is None else
                     {"name": variant.name, "overrides": variant.overrides})  # fmt: skip
    write_fleet_report(args.out, summaries, meta, runs, fleet.streams, classes)
    print(f"results in {args.out}")
    return 0
