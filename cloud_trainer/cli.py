"""``cloud-trainer``: the trainer-side command line."""

from __future__ import annotations

import argparse
import json

from cloud_trainer.evaluation.command import add_evaluate_parser
from cloud_trainer.export.command import add_export_parser
from cloud_trainer.memory import keep_freed_memory
from cloud_trainer.opa.command import add_opa_parser
from cloud_trainer.tools.commands import add_tool_parsers
from shared_schema.cli import command_parser, fail, run_command
from shared_schema.config_files import ConfigFileError


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cloud_trainer.config import DEFAULT_CONFIG, load_config
    from cloud_trainer.daemon import TrainerDaemon

    config = load_config(args.config)
    if args.device:
        config = config.model_copy(
            update={
                "training": config.training.model_copy(update={"device": args.device}),
                "teacher": config.teacher.model_copy(update={"device": args.device}),
            }
        )
    source = args.config or DEFAULT_CONFIG  # what an error names
    try:
        if args.ray:
            from cloud_trainer.scaleout.front import RayFront

            daemon: TrainerDaemon | RayFront = RayFront(config, args.ray, args.front)
        else:
            daemon = TrainerDaemon(config)
        daemon.start()
    except ConfigFileError as exc:  # e.g. a TLS file that is not there, a port in use
        return fail(f"{source}: {exc}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if daemon.refusal is not None:
                return fail(f"{source}: {daemon.refusal}")
    finally:
        daemon.stop()
    return 0


def _unit(args: argparse.Namespace) -> int:
    """The systemd unit of ``serve`` with this installation's paths (one truth: the template)."""
    import os
    import sys
    from importlib.resources import files
    from pathlib import Path

    from cloud_trainer.config import load_config

    config = Path(args.config).resolve()
    os.environ.update(args.env)  # the config is checked as the service will read it
    load_config(str(config))  # a unit for a config that cannot start is an error now, not later
    template = (files("cloud_trainer") / "deploy" / "amstream-trainer.service").read_text()
    values = {"@BIN@": str(Path(sys.executable).parent), "@CONFIG@": str(config),
              "@USER@": args.user}  # fmt: skip
    for key, value in values.items():
        template = template.replace(key, value)
    env = "".join(f"Environment={_systemd_quoted(f'{k}={v}')}\n" for k, v in args.env)
    print(template.replace("UMask=", f"{env}UMask=", 1), end="")
    return 0


def _systemd_quoted(assignment: str) -> str:
    """One Environment= assignment as systemd reads it: quoted, ``%`` not a specifier."""
    escaped = assignment.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE")
    return name, value


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
        return fail(exc)
    except (OSError, ValueError) as exc:
        return fail(f"{args.model}: {exc}")
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "cloud-trainer", "Cloud trainer: teacher labelling, Adaptive Model Streaming, evaluation."
    )
    serve = sub.add_parser("serve", help="the trainer daemon: AMS for every device on the broker")
    serve.add_argument("--config", help="trainer.toml (default: the bundled default_trainer.toml)")
    serve.add_argument("--device", help="torch device for training and a torch teacher: cpu, cuda")
    serve.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run each device's session as a Ray actor on this cluster (host:port, auto, or"
        " local: a cluster of this process's own); this process is one MQTT front of [ray] group",
    )
    serve.add_argument(
        "--front",
        type=int,
        default=0,
        metavar="N",
        help="with --ray: this front's number, unique in the group (its MQTT client id)",
    )
    serve.set_defaults(func=_serve)

    unit = sub.add_parser(
        "unit",
        help="print the systemd unit that runs serve as a service",
        description="Print a hardened systemd unit for cloud-trainer serve with this "
        "installation's paths: cloud-trainer unit --config /etc/amstream-trainer/trainer.toml "
        "> /etc/systemd/system/amstream-trainer.service",
    )
    unit.add_argument("--config", required=True, help="the trainer.toml the service reads")
    unit.add_argument("--user", default="amstream-trainer", help="the system user it runs as")
    unit.add_argument(
        "--env",
        action="append",
        default=[],
        type=_env_pair,
        metavar="NAME=VALUE",
        help="an environment variable for the service, e.g. AMS_SHARED_DIR=/srv/amstream/shared"
        " (what the config's ${NAME} read); secrets go in /etc/USER/env (EnvironmentFile, mode"
        " 600), not here: a unit file is world-readable",
    )
    unit.set_defaults(func=_unit)

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

    add_tool_parsers(sub)
    add_export_parser(sub)
    add_evaluate_parser(sub)
    add_opa_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    return run_command(build_parser(), argv)
