"""``cloud-trainer``: the trainer-side command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cloud_trainer.evaluation.command import add_evaluate_parser
from cloud_trainer.export.command import add_export_parser
from edge_runtime.cli import command_parser, run_command
from shared_schema.mqtt import BrokerConfig


def _demo(args: argparse.Namespace) -> int:
    from cloud_trainer.demo import run_demo
    from firmware_configs import find_shared_dir

    videos = [Path(v) for v in args.video or []]
    if not videos:
        shared = find_shared_dir()
        if shared is None:
            print(
                "error: no video given and no shared data directory found "
                "(set AMS_SHARED_DIR or pass --video)",
                file=sys.stderr,
            )
            return 2
        videos = [shared / "videos" / "vtest.avi", *sorted((shared / "videos").glob("*.mp4"))]
    problem = _demo_arguments(args, videos)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out)
    run_demo(videos, out, devices=args.devices, duration_s=args.duration, broker=args.broker)
    print(f"demo report: {out.resolve() / 'report.md'}")
    return 0


def _demo_arguments(args: argparse.Namespace, videos: list[Path]) -> str | None:
    """What is wrong with the demo's arguments, before anything starts."""
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        return f"no such video: {', '.join(missing)}"
    if not 1 <= args.devices <= 64:
        return f"--devices {args.devices}: between 1 and 64"
    if args.duration <= 0:
        return f"--duration {args.duration}: must be positive"
    host, _, port = (args.broker or "127.0.0.1:1883").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"--broker {args.broker}: expected HOST:PORT"
    return None


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cloud_trainer.config import ConfigError, load_config
    from cloud_trainer.daemon import TrainerDaemon

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.device:
        config = config.model_copy(
            update={
                "training": config.training.model_copy(update={"device": args.device}),
                "teacher": config.teacher.model_copy(update={"device": args.device}),
            }
        )
    daemon = TrainerDaemon(config)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    daemon.start()
    stop.wait()
    daemon.stop()
    return 0


def _import_tflite(args: argparse.Namespace) -> int:
    from cloud_trainer.student import UnsupportedOpsError, import_tflite

    try:
        if args.check:
            from cloud_trainer.student.agreement import check_agreement

            report = check_agreement(args.model, args.check, frames=args.frames)
        else:
            student = import_tflite(args.model)
            report = {"model": str(args.model), "parameters": student.parameter_count}
    except UnsupportedOpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {args.model}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


def _bench_updates(args: argparse.Namespace) -> int:
    from cloud_trainer.bench_updates import bench_updates
    from cloud_trainer.config import load_config
    from cloud_trainer.training import TrainingConfig
    from edge_runtime.bench_results import write_result

    config = load_config(args.config)
    training = TrainingConfig(
        iterations=args.iterations,
        batch_size=args.batch,
        resolution=(args.size, args.size),
        device=args.device,
    )
    results = bench_updates(
        args.video,
        student_model=config.student.model,
        teacher_model=config.teacher.model,
        updates=args.updates,
        training=training,
    )
    results["saved_to"] = str(write_result("bench-updates", results))
    print(json.dumps(results, indent=None if args.json else 2))
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cloud_trainer.bench_serve import bench_serve
    from cloud_trainer.config import load_config
    from edge_runtime.bench_results import write_result

    config = load_config(args.config)
    config = config.model_copy(
        update={
            "training": config.training.model_copy(
                update={
                    "iterations": args.iterations,
                    "batch_size": args.batch,
                    "resolution": (args.size, args.size),
                    "device": args.device,
                }
            )
        }
    )
    results = bench_serve(
        Path(args.video),
        devices=args.devices,
        duration_s=args.duration,
        config=config,
        sweep=not args.no_sweep,
    )
    results["saved_to"] = str(write_result("bench-serve", results))
    print(json.dumps(results, indent=None if args.json else 2))
    return 0 if results["message_loss"] == 0 else 1


def _monitor(args: argparse.Namespace) -> int:
    from cloud_trainer.monitor import monitor

    config = BrokerConfig(
        host=args.host, port=args.port, protocol=args.protocol, prefix=args.prefix
    )
    monitor(config, lambda line: print(line, flush=True), count=args.count, timeout_s=args.timeout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "cloud-trainer", "Cloud trainer: teacher labelling, Adaptive Model Streaming, evaluation."
    )
    demo = sub.add_parser("demo", help="local demo: broker, trainer, edge runtimes, live view")
    demo.add_argument("--video", action="append",
                      help="a video to play; repeat for several (default: the shared videos; "
                      "device i plays video i modulo their number)")  # fmt: skip
    demo.add_argument("--devices", type=int, default=1, help="edge runtimes, one process each")
    demo.add_argument("--duration", type=float, default=120.0, help="seconds to run")
    demo.add_argument("--out", default="demo-report", help="directory for the report")
    demo.add_argument("--broker", metavar="HOST:PORT",
                      help="use this broker instead of starting a local mosquitto")  # fmt: skip
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="the trainer daemon: AMS for every device on the broker")
    serve.add_argument("--config", help="trainer.toml (default: the bundled default_trainer.toml)")
    serve.add_argument("--device", help="torch device for training and a torch teacher: cpu, cuda")
    serve.set_defaults(func=_serve)

    imp = sub.add_parser(
        "import-tflite", help="import a quantized .tflite as a trainable torch student"
    )
    imp.add_argument("model", help=".tflite file")
    imp.add_argument(
        "--check",
        metavar="VIDEO",
        help="compare fake-quant labels with LiteRT's on frames of this video",
    )
    imp.add_argument("--frames", type=int, default=20, help="frames to compare (--check)")
    imp.add_argument("--json", action="store_true", help="one line of JSON")
    imp.set_defaults(func=_import_tflite)

    bu = sub.add_parser(
        "bench-updates", help="bytes per update in every format, from real training phases"
    )
    bu.add_argument("--video", required=True)
    bu.add_argument("--updates", type=int, default=3)
    bu.add_argument("--iterations", type=int, default=20, help="K")
    bu.add_argument("--batch", type=int, default=4)
    bu.add_argument("--size", type=int, default=321, help="side of the random crops trained on")
    bu.add_argument("--device", default="cpu")
    bu.add_argument("--config", help="trainer.toml naming the student and teacher")
    bu.add_argument("--json", action="store_true", help="one line of JSON")
    bu.set_defaults(func=_bench_updates)

    bs = sub.add_parser(
        "bench-serve", help="one trainer, N emulated devices on a local broker (JSON)"
    )
    bs.add_argument("--devices", type=int, required=True)
    bs.add_argument("--video", required=True)
    bs.add_argument("--duration", type=float, default=60.0, help="seconds the devices play")
    bs.add_argument("--iterations", type=int, default=20, help="K")
    bs.add_argument("--batch", type=int, default=4)
    bs.add_argument("--size", type=int, default=321, help="side of the random crops trained on")
    bs.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    bs.add_argument("--no-sweep", action="store_true", help="skip the 1-device round")
    bs.add_argument("--config", help="trainer.toml (student, teacher)")
    bs.add_argument("--json", action="store_true", help="one line of JSON")
    bs.set_defaults(func=_bench_serve)

    add_export_parser(sub)
    add_evaluate_parser(sub)

    mon = sub.add_parser("monitor", help="print every protocol message under a prefix as JSON")
    mon.add_argument("--host", default="127.0.0.1")
    mon.add_argument("--port", type=int, default=1883)
    mon.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    mon.add_argument("--prefix", default="ams")
    mon.add_argument("--count", type=int, help="exit after this many messages")
    mon.add_argument("--timeout", type=float, help="exit after this many seconds")
    mon.set_defaults(func=_monitor)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)
