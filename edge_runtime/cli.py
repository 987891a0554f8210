"""``edge-runtime``: the device-side command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_runtime.profile import load_profile
from firmware_configs import BUNDLED_PROFILES
from shared_schema.bench_results import add_results_dir_option, write_result
from shared_schema.cli import USAGE_ERROR, command_parser, fail, run_command
from shared_schema.config_files import ConfigFileError


def _check_profile(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    print(json.dumps(profile.model_dump(mode="json"), indent=2))
    if args.files:
        problems = profile.file_problems()
        for line in problems:
            print(f"error: {args.profile}: {line}", file=sys.stderr)
        return 1 if problems else 0
    return 0


def _run(args: argparse.Namespace) -> int:
    from edge_runtime.backends import BackendUnavailable, ModelError
    from edge_runtime.runtime import EdgeRuntime, install_signal_handlers
    from edge_runtime.sources import SourceError, open_source

    profile = load_profile(args.profile)
    problems = profile.file_problems()
    if problems:  # before anything opens them: the first one, and its fix
        return fail(f"{args.profile}: {problems[0]}")
    overrides = {"id": args.device_id} if args.device_id else {}
    if overrides:
        profile = profile.model_copy(update={"device": profile.device.model_copy(update=overrides)})
    source = profile.source
    uri = args.source or source.uri
    if not uri:
        return fail("no source: give --source or set [source] uri in the profile")
    size = (source.width, source.height) if source.width and source.height else None
    try:
        frames = open_source(
            uri,
            realtime=source.realtime and not args.fast,
            loop=source.loop if args.loop is None else args.loop,
            size=size,
            fps=source.fps,
        )
    except SourceError as exc:
        return fail(exc, 1)
    try:
        runtime = EdgeRuntime.from_profile(profile)
    except ModelError as exc:
        return fail(f"{args.profile}: model.initial {profile.model.initial}: {exc}")
    except BackendUnavailable as exc:
        return fail(f"{args.profile}: inference.backend {profile.inference.backend}: {exc}")
    except ConfigFileError as exc:  # e.g. a TLS file that is no certificate
        return fail(f"{args.profile}: {exc}")
    install_signal_handlers(runtime)
    failure: tuple[str, int] | None = None
    try:
        runtime.start()
        with frames:
            summary = runtime.run(frames, max_frames=args.max_frames)
    except SourceError as exc:
        failure = (str(exc), 1)
    except ConfigFileError as exc:  # a refused login, a busy metrics port
        failure = (f"{args.profile}: {exc}", USAGE_ERROR)
    finally:
        runtime.shutdown()  # before the error: it is the last line a person reads
    if failure is not None:
        return fail(*failure)
    print(
        json.dumps(
            {
                "frames": summary.frames,
                "fps": round(summary.fps, 2),
                "swaps": summary.swaps,
                "model_version": summary.model_version,
            }
        )
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from edge_runtime import bench

    common = {"rounds": args.rounds, "threads": args.threads}
    for flag, path in (("--model", args.model), ("--teacher", args.teacher)):
        if path is not None and not Path(path).is_file():
            return fail(f"{flag} {path}: no such file (give the .tflite's path)")
    if args.opa_budget_ms is not None:
        from edge_runtime.opa import bench as opa_bench

        if args.teacher is None:
            return fail("--opa-budget-ms needs --teacher (the .tflite whose labels score mIoU)")
        name = "edge-opa"
        results = opa_bench.opa(
            Path(args.model), args.source, Path(args.teacher), budget_ms=args.opa_budget_ms,
            loads=args.background, frames=args.frames, start=args.start_frame,
            threads=args.threads,
        )  # fmt: skip
    elif args.swap_every:
        name = "edge-swap"
        results = bench.swap(
            Path(args.model), args.source, swap_every_s=args.swap_every, fps=args.fps,
            duration_s=args.duration, **common,
        )  # fmt: skip
    else:
        name = "edge-bench"
        results = bench.throughput(
            Path(args.model), args.source, frames=args.frames, sampling_fps=args.sampling_fps,
            bitrate_kbps=args.bitrate, broker=args.broker, oneadapt_every_s=args.oneadapt_every,
            scene_cut=args.scene_cut, **common,
        )  # fmt: skip
    if not args.no_save:
        results["saved_to"] = str(write_result(name, results, args.results_dir))
    print(json.dumps(results, indent=2 if not args.json else None))
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from edge_runtime import bundle

    target = bundle.Target(platform=args.platform, python=args.python_version)
    made = bundle.build(
        Path(args.profile), Path(args.out), target,
        wheel=Path(args.wheel) if args.wheel else None,
        find_links=[Path(d) for d in args.find_links],
        extras=args.extras.split(",") if args.extras else None,
        add_wheels=[Path(w) for w in args.add_wheel],
    )  # fmt: skip
    print(json.dumps(made, indent=2))
    return 0


def _add_bundle_parser(sub: Any) -> None:
    pack = sub.add_parser(
        "bundle",
        help="one file with everything a device installs with no network access",
        description="Write an offline bundle for the device a profile describes: the "
        "project's wheel and its dependencies' wheels for the target platform, the profile and "
        "every file it names, a systemd unit and install.sh (which builds a venv with pip "
        "--no-index). Needs the package index (or --find-links) here, never on the device.",
    )
    pack.add_argument("--profile", required=True, help="profile file or bundled profile name")
    pack.add_argument("--out", required=True, help="the .tar.gz to write")
    pack.add_argument(
        "--platform",
        help="pip platform tag of the device, e.g. manylinux_2_36_aarch64 (Raspberry Pi OS 12),"
        " manylinux_2_35_aarch64 (JetPack 6); default: this machine",
    )
    pack.add_argument(
        "--python-version",
        default=f"{sys.version_info[0]}.{sys.version_info[1]}",
        help="the device's Python, 3.10 to 3.12 (default: this one's)",
    )
    pack.add_argument("--wheel", help="the project's wheel (default: built from this source)")
    pack.add_argument(
        "--find-links",
        action="append",
        default=[],
        metavar="DIR",
        help="also take wheels from DIR",
    )
    pack.add_argument(
        "--extras",
        help="the project's extras to install, comma-separated (default: edge, and jetson for"
        " the onnxruntime back-end)",
    )
    pack.add_argument(
        "--add-wheel",
        action="append",
        default=[],
        metavar="WHL",
        help="also install this wheel, e.g. NVIDIA's onnxruntime_gpu for a Jetson (with"
        " --extras edge, so that PyPI's CPU onnxruntime stays out)",
    )
    pack.set_defaults(func=_bundle)


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "edge-runtime",
        "Edge runtime: per-frame inference, sampling, H.264 uplink over MQTT, model hot swap.",
    )
    check = sub.add_parser(
        "check-profile",
        help="validate a device profile and print it resolved",
        description="Validate a profile (a path, or one of: "
        + ", ".join(BUNDLED_PROFILES)
        + ") and print it with paths resolved.",
    )
    check.add_argument("profile", help="profile file or bundled profile name")
    check.add_argument(
        "--files",
        action="store_true",
        help="also require the files the profile names to exist on this machine",
    )
    check.set_defaults(func=_check_profile)

    run = sub.add_parser(
        "run",
        help="run the device: inference on every frame, samples up, model updates in",
        description="Run the edge runtime a profile describes, until the source ends or "
        "SIGINT/SIGTERM.",
    )
    run.add_argument("--profile", required=True, help="profile file or bundled profile name")
    run.add_argument(
        "--source",
        help="video file, rtsp:// or http:// URL, /dev/videoN or "
        "picamera2: (default: the profile's [source] uri)",
    )
    run.add_argument("--device-id", help="override the profile's device id")
    run.add_argument(
        "--fast",
        action="store_true",
        help="files: as fast as possible instead of at their frame rate",
    )
    run.add_argument(
        "--loop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="files: start again at the end (default: the profile's)",
    )
    run.add_argument("--max-frames", type=int, help="stop after this many frames")
    run.set_defaults(func=_run)

    _add_bundle_parser(sub)

    bench = sub.add_parser(
        "bench",
        help="the runtime against a bare LiteRT loop in the same run (JSON)",
        description="Throughput of the whole runtime against a bare set_tensor/invoke/"
        "get_tensor loop on the same frames; with --oneadapt-every, also with the knobs "
        "stepped; with --scene-cuts, also with the scene-cut detector on; with --swap-every, "
        "frame gaps while updates are hot-swapped. Results are also written under "
        "benchmarks/results/.",
    )
    bench.add_argument("--model", required=True, help=".tflite model")
    bench.add_argument("--source", required=True, help="video file")
    bench.add_argument("--frames", type=int, default=300)
    bench.add_argument("--rounds", type=int, default=3, help="alternating bare/runtime rounds")
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--sampling-fps", type=float, default=1.0)
    bench.add_argument("--bitrate", type=float, default=200.0, help="H.264 target, kbps")
    bench.add_argument("--broker", help="HOST:PORT of an MQTT broker (default: a null uplink)")
    bench.add_argument("--swap-every", type=float, help="apply an update every S seconds")
    bench.add_argument(
        "--oneadapt-every", type=float, default=0.0, help="also step the knobs every S seconds"
    )
    bench.add_argument(
        "--scene-cuts", dest="scene_cut", action="store_true",
        help="also run the runtime with [scene_cut] on (its detector on every frame)",
    )  # fmt: skip
    bench.add_argument("--fps", type=float, help="pace frames at this rate (swap benchmark)")
    bench.add_argument(
        "--opa-budget-ms",
        type=float,
        help="OPA: the latency budget per frame; --model is an elastic student (cloud-trainer"
        " opa build), every fixed sub-network, the static table and OPA are compared",
    )
    bench.add_argument(
        "--background",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[0, 1, 2],
        help="OPA: busy background processes to measure at, e.g. 0,1,2",
    )
    bench.add_argument("--teacher", help="OPA: the teacher .tflite that labels the frames")
    bench.add_argument(
        "--start-frame",
        type=int,
        default=0,
        help="OPA: skip this many frames first (frames the elastic student was not trained on)",
    )
    bench.add_argument("--duration", type=float, default=30.0, help="swap benchmark seconds")
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.add_argument("--no-save", action="store_true", help="do not write a result file")
    add_results_dir_option(bench)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)
