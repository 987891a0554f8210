"""``edge-runtime``: the device-side command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from firmware_configs import BUNDLED_PROFILES, ProfileError, load_profile


def _check_profile(args: argparse.Namespace) -> int:
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(profile.model_dump(mode="json"), indent=2))
    if args.files:
        named = [
            ("model.initial", profile.model.initial),
            ("model.labels", profile.model.labels),
            ("model.public_key", profile.model.public_key),
        ]
        missing = [
            f"{field}: {path}"
            for field, path in named
            if path is not None and not Path(path).is_file()
        ]
        for line in missing:
            print(f"missing file: {line}", file=sys.stderr)
        return 1 if missing else 0
    return 0


def command_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, Any]:
    """A parser with the options every command of the project shares, and its subcommands."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=version("amstream"))
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND", required=True)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return args.func(args)


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
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)
