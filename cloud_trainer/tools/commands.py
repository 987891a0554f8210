"""The trainer's tool commands: ``demo``, ``bench-updates``, ``bench-serve``,
``bench-dashboard``, ``monitor``."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cloud_trainer.dashboard.config import DASHBOARD_PORT
from shared_schema.bench_results import add_results_dir_option, write_result
from shared_schema.cli import fail
from shared_schema.config_files import ConfigFileError, find_shared_dir
from shared_schema.mqtt import BrokerConfig, load_broker_config


def _demo(args: argparse.Namespace) -> int:
    from cloud_trainer.tools.demo import run_demo

    videos = [Path(v) for v in args.video or []]
    if not videos:
        shared = find_shared_dir()
        if shared is None:
            return fail(
                "no video given and no shared data directory found "
                "(set AMS_SHARED_DIR or pass --video)"
            )
        videos = [shared / "videos" / "vtest.avi", *sorted((shared / "videos").glob("*.mp4"))]
    problem = _demo_arguments(args, videos)
    if problem:
        return fail(problem)
    out = Path(args.out)
    try:
        run_demo(videos, out, devices=args.devices, duration_s=args.duration,
                 broker=args.broker, dashboard_port=args.dashboard_port,
                 token_file=args.dashboard_token_file)  # fmt: skip
    except ConfigFileError as exc:  # a dashboard port in use, a token file too short
        return fail(exc)
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
    if not 0 <= args.dashboard_port <= 65535:
        return f"--dashboard-port {args.dashboard_port}: between 0 (a free one) and 65535"
    if args.dashboard_port and not _free(args.dashboard_port):
        return (f"--dashboard-port {args.dashboard_port}: in use on 127.0.0.1 (another demo or"
                " trainer?): pick another, or 0 for a free one")  # fmt: skip
    host, _, port = (args.broker or "127.0.0.1:1883").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"--broker {args.broker}: expected HOST:PORT"
    return None


def _free(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


def _bench_updates(args: argparse.Namespace) -> int:
    from cloud_trainer.ams.training import TrainingConfig
    from cloud_trainer.config import load_config
    from cloud_trainer.tools.bench_updates import bench_updates

    config = load_config(args.config)
    training = TrainingConfig(**_training_settings(args))
    results = bench_updates(
        args.video,
        student_model=config.student.model,
        teacher_model=config.teacher.model,
        updates=args.updates,
        training=training,
    )
    results["saved_to"] = str(write_result("bench-updates", results, args.results_dir))
    print(json.dumps(results, indent=None if args.json else 2))
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from cloud_trainer.config import load_config
    from cloud_trainer.tools.bench_serve import bench_serve, find_capacity, ray_overhead

    if args.devices is None and not (args.find_capacity or args.ray):
        return fail("bench-serve: --devices N is required (or --find-capacity, --ray)")
    if args.devices is not None and not 1 <= args.devices <= 1000:
        return fail(f"--devices {args.devices}: expected 1 to 1000")
    config = load_config(args.config)
    training = config.training.model_copy(update=_training_settings(args))
    config = config.model_copy(update={"training": training})
    if args.device != "cpu":  # the teacher labels on the same accelerator, as torch
        teacher = config.teacher.model_copy(update={"kind": "torch", "device": args.device})
        config = config.model_copy(update={"teacher": teacher})
    video, duration = Path(args.video), args.duration
    if args.ray:
        most = args.devices or 32
        results = ray_overhead(video, max_devices=most, duration_s=duration, config=config)
    elif args.find_capacity:
        most = args.devices or 32
        results = find_capacity(video, max_devices=most, duration_s=duration, config=config)
    else:
        results = bench_serve(
            video, devices=args.devices, duration_s=duration, config=config,
            sweep=not args.no_sweep,
        )  # fmt: skip
    results["saved_to"] = str(write_result("bench-serve", results, args.results_dir))
    print(json.dumps(results, indent=None if args.json else 2))
    return 0 if results["message_loss"] == 0 else 1


def _bench_dashboard(args: argparse.Namespace) -> int:
    from cloud_trainer.tools.bench_dashboard import bench_dashboard
    from cloud_trainer.tools.browser import BrowserMissing

    if not 1 <= args.devices <= 10_000 or args.rounds < 1:
        return fail(f"--devices {args.devices} (1-10000), --rounds {args.rounds} (1 or more)")
    try:
        results = bench_dashboard(args.devices, args.rounds)
    except BrowserMissing as exc:
        return fail(exc)
    results["saved_to"] = str(write_result("bench-dashboard", results, args.results_dir))
    print(json.dumps(results, indent=None if args.json else 2))
    return 0


def _keys(args: argparse.Namespace) -> int:
    from cloud_trainer.fleet import keys

    if args.action == "show":
        result: dict[str, object] = keys.show(Path(args.path))
    else:
        result = getattr(keys, args.action)(Path(args.dir))
    print(json.dumps(result, indent=2))
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from cloud_trainer.fleet import provision

    result = provision(
        Path(args.dir),
        args.devices,
        hosts=args.broker_host,
        port=args.port,
        prefix=args.prefix,
        profile=args.profile,
        key_dir=Path(args.keys) if args.keys else None,
        state_dir=args.state_dir,
        broker_user=args.broker_user,
        fronts=args.trainer_fronts,
    )
    print(json.dumps(result, indent=2))
    return 0


def _training_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "iterations": args.iterations,
        "batch_size": args.batch,
        "resolution": (args.size, args.size),
        "device": args.device,
    }


def _monitor(args: argparse.Namespace) -> int:
    from cloud_trainer.tools.monitor import monitor

    if args.mqtt:
        config = load_broker_config(Path(args.mqtt))
    else:
        tls = {"ca_file": args.ca_file} if args.ca_file or args.tls else None
        options = {"host": args.host, "port": args.port, "protocol": args.protocol,
                   "prefix": args.prefix, "tls": tls, "username": args.username,
                   "password_file": args.password_file}  # fmt: skip
        try:
            config = BrokerConfig.model_validate(options)
        except ValidationError as exc:  # the options, as a file's fields would be
            err = exc.errors(include_url=False)[0]
            option = f"--{str(err['loc'][0]).replace('_', '-')}" if err["loc"] else "options"
            return fail(f"monitor {option}: {err['msg'].removeprefix('Value error, ')}")
    monitor(config, lambda line: print(line, flush=True), count=args.count, timeout_s=args.timeout)
    return 0


def add_tool_parsers(sub: Any) -> None:
    demo = sub.add_parser("demo", help="local demo: broker, trainer, edge runtimes, live view")
    demo.add_argument("--video", action="append",
                      help="a video to play; repeat for several (default: the shared videos; "
                      "device i plays video i modulo their number)")  # fmt: skip
    demo.add_argument("--devices", type=int, default=1, help="edge runtimes, one process each")
    demo.add_argument("--duration", type=float, default=120.0, help="seconds to run")
    demo.add_argument("--out", default="demo-report", help="directory for the report")
    demo.add_argument("--broker", metavar="HOST:PORT",
                      help="use this broker instead of starting a local mosquitto")  # fmt: skip
    demo.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT,
                      help=f"the fleet dashboard's port on 127.0.0.1 (default {DASHBOARD_PORT};"
                      " 0: a free one)")  # fmt: skip
    demo.add_argument("--dashboard-token-file", type=Path, metavar="PATH",
                      help="the operator's token for the dashboard's actions (default: a new"
                      " one, in a file the demo names)")  # fmt: skip
    demo.set_defaults(func=_demo)

    bu = sub.add_parser(
        "bench-updates", help="bytes per update in every format, from real training phases"
    )
    bu.add_argument("--video", required=True)
    bu.add_argument("--updates", type=int, default=3)
    _add_training_options(bu)
    bu.set_defaults(func=_bench_updates)

    bs = sub.add_parser(
        "bench-serve", help="one trainer, N emulated devices on a local broker (JSON)"
    )
    bs.add_argument("--devices", type=int, help="devices (with --find-capacity: the most tried)")
    bs.add_argument("--video", required=True)
    bs.add_argument("--duration", type=float, default=60.0, help="seconds the devices play")
    bs.add_argument("--no-sweep", action="store_true", help="skip the 1-device round")
    bs.add_argument(
        "--find-capacity",
        action="store_true",
        help="the most devices whose phases all keep pace with T_update (within 20 %%)",
    )
    bs.add_argument(
        "--ray",
        action="store_true",
        help="--find-capacity for the single process and for the same sessions on a local Ray"
        " cluster (serve --ray), on the same cores: the Ray path's overhead",
    )
    _add_training_options(bs)
    bs.set_defaults(func=_bench_serve)

    bd = sub.add_parser(
        "bench-dashboard",
        help="the fleet page with N emulated devices in headless Chromium, against 1 (JSON)",
    )
    bd.add_argument("--devices", type=int, default=100)
    bd.add_argument("--rounds", type=int, default=5, help="page loads per size")
    bd.add_argument("--json", action="store_true", help="one line of JSON")
    add_results_dir_option(bd)
    bd.set_defaults(func=_bench_dashboard)

    keys = sub.add_parser(
        "keys", help="the trainer's signing keys: generate, rotate, show (Ed25519, key ids)"
    )
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, what in (
        ("generate", "make a current and a next key pair in --dir (never overwrites)"),
        ("rotate", "the next key becomes current, a fresh one next; the old one is retired"),
    ):
        parser = actions.add_parser(action, help=what)
        parser.add_argument("--dir", required=True, help="the key directory")
    show = actions.add_parser("show", help="the key id of a key file (.pem or .pub)")
    show.add_argument("path")
    keys.set_defaults(func=_keys)

    fleet = sub.add_parser("fleet", help="broker security for a fleet: CA, logins, ACL, profiles")
    fleet_actions = fleet.add_subparsers(dest="action", metavar="ACTION", required=True)
    prov = fleet_actions.add_parser(
        "provision",
        help="write (or extend) a fleet directory: CA, broker certificate and mosquitto.conf, "
        "a login per device and service, the ACL, a profile per device, the trainer's config",
    )
    prov.add_argument("devices", nargs="+", metavar="DEVICE", help="device ids")
    prov.add_argument("--dir", required=True, help="the fleet directory")
    prov.add_argument(
        "--broker-host",
        action="append",
        help="name or address devices reach the broker at; repeat for several (the certificate "
        "covers all, profiles use the first; default: 127.0.0.1 and localhost)",
    )
    prov.add_argument("--port", type=int, help="the broker's TLS port (default 8883)")
    prov.add_argument(
        "--broker-user",
        help="the user mosquitto runs as (default: mosquitto, the Debian package's); it reads "
        "its key, passwords and ACL: as root, provision hands them to it, else it prints the "
        "chown to run",
    )
    prov.add_argument("--prefix", help="topic prefix (default ams)")
    prov.add_argument(
        "--trainer-fronts",
        type=int,
        default=1,
        metavar="N",
        help="the trainer's MQTT fronts (serve --ray --front 0..N-1): front 0 logs in as the "
        "trainer, each other one with a login and a trainer.toml of its own (default 1)",
    )
    prov.add_argument("--profile", default="cpu", help="the bundled profile devices start from")
    prov.add_argument("--keys", help="the trainer's key directory (default: $AMS_KEY_DIR)")
    prov.add_argument(
        "--state-dir",
        help="where each device keeps its slots and spool, on the device "
        "(default: ~/.local/state/amstream)",
    )
    fleet.set_defaults(func=_fleet)

    mon = sub.add_parser("monitor", help="print every protocol message under a prefix as JSON")
    mon.add_argument("--mqtt", metavar="TOML",
                     help="the [mqtt] table of this file: a fleet's monitor/monitor.toml (its "
                     "login, TLS), a device profile or a trainer config; replaces the options "
                     "below")  # fmt: skip
    mon.add_argument("--host", default="127.0.0.1")
    mon.add_argument("--port", type=int, default=1883)
    mon.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    mon.add_argument("--prefix", default="ams")
    mon.add_argument("--tls", action="store_true", help="TLS, the system's trust store")
    mon.add_argument("--ca-file", help="TLS with this CA certificate (a fleet's ca/ca.pem)")
    mon.add_argument("--username", help="the login (a fleet's: monitor)")
    mon.add_argument("--password-file", help="a file holding its password")
    mon.add_argument("--count", type=int, help="exit after this many messages")
    mon.add_argument("--timeout", type=float, help="exit after this many seconds")
    mon.set_defaults(func=_monitor)


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    """The training settings and output options both trainer benchmarks take."""
    parser.add_argument("--iterations", type=int, default=20, help="K")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=321, help="side of the random crops trained on")
    parser.add_argument(
        "--device", default="cpu", help="torch device: cpu or cuda (bench-serve: the teacher too)"
    )
    parser.add_argument("--config", help="trainer.toml naming the student and teacher")
    parser.add_argument("--json", action="store_true", help="one line of JSON")
    add_results_dir_option(parser)
