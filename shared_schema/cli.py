"""What every command line of the project shares: ``--version``, ``--log-level``, subcommands,
and the one-line error a person sees."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import version
from typing import Any

from shared_schema.config_files import ConfigFileError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
USAGE_ERROR = 2  # the exit status of a command given something it cannot use


def command_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, Any]:
    """A parser with the options every command of the project shares, and its subcommands."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=version("amstream"))
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help=", ".join(LOG_LEVELS))  # fmt: skip
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND", required=True)


def configure_logging(level: int | str) -> None:
    """The project's log lines, in a command or in a process it has Ray start (an actor)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run its subcommand; a config file it cannot use is one line."""
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return args.func(args)
    except ConfigFileError as exc:
        return fail(exc)


def fail(message: object, status: int = USAGE_ERROR) -> int:
    """Print ``error: message`` on one line of stderr; returns ``status`` for the caller."""
    print(f"error: {message}", file=sys.stderr)
    return status
