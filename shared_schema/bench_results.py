"""Benchmark results on disk: each run is one JSON file under ``benchmarks/results/`` that says
what ran (the command), where (the machine), when, and on which commit.

Both sides' benchmarks write through ``write_result``. The directory is the current directory's
``benchmarks/results/`` (in a checkout, run from its root), ``$AMS_BENCH_RESULTS`` or
``--results-dir``: never inside the installed package.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from shared_schema.compat import UTC

RESULTS_DIR_ENV = "AMS_BENCH_RESULTS"
# Variables that change how fast the same code runs (threads, their waiting, the allocator)
TUNING_VARIABLES = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "GLIBC_TUNABLES",
)


def results_dir() -> Path:
    """``$AMS_BENCH_RESULTS``, else ``benchmarks/results`` under the current directory."""
    if os.environ.get(RESULTS_DIR_ENV):
        return Path(os.environ[RESULTS_DIR_ENV])
    return Path.cwd() / "benchmarks" / "results"


def add_results_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir",
        type=Path,
        help=f"where the result file goes (default: ${RESULTS_DIR_ENV}, else ./benchmarks/results)",
    )


def machine() -> dict[str, object]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    names = ("ai-edge-litert", "av", "torch", "numpy", "onnxruntime")
    packages = {name: v for name in names if (v := _version(name)) is not None}
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "packages": packages,
        "environment": {k: os.environ[k] for k in TUNING_VARIABLES if k in os.environ},
    }


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the code that ran: its checkout's, with a "+" where tracked files differ
    from it, or None for an installed wheel."""
    try:
        commit, changed = (
            subprocess.run(
                ["git", *args],
                cwd=Path(__file__).resolve().parents[1],
                capture_output=True,
                text=True,
                check=True,
                timeout=5,
            ).stdout.strip()
            for args in (("rev-parse", "--short", "HEAD"), ("status", "--porcelain", "-uno"))
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+" if changed else "")) or None


def write_result(name: str, results: dict[str, object], directory: Path | None = None) -> Path:
    """Write one run; returns the file's path."""
    now = datetime.datetime.now(UTC)
    record = {
        "benchmark": name,
        "command": " ".join(
            [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
        ),
        "date": now.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "version": _version("amstream"),
        "machine": machine(),
        "results": results,
    }
    target = directory or results_dir()
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
