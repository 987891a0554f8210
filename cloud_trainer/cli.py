"""``cloud-trainer``: the trainer-side command line."""

from __future__ import annotations

import argparse
import sys

from edge_runtime.cli import command_parser, run_command
from shared_schema.mqtt import BrokerConfig


def _demo(args: argparse.Namespace) -> int:
    print("demo: not yet available (needs the edge runtime, model update and trainer issues)")
    return 0


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
    demo = sub.add_parser("demo", help="local demo: embedded broker, trainer, one edge runtime")
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="the trainer daemon: AMS for every device on the broker")
    serve.add_argument("--config", help="trainer.toml (default: the bundled default_trainer.toml)")
    serve.add_argument("--device", help="torch device for training and a torch teacher: cpu, cuda")
    serve.set_defaults(func=_serve)

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
