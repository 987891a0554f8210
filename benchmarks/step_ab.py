"""A training step before and after a change, interleaved (``--old REV`` against the tree).

The machines this project is measured on drift by up to 2x within an hour, so one tree's step
against another's measured at another time means little. This runs ``bench_step`` (the trainer's
step at its default settings, and its plain forward pass) in fresh processes, alternating the
revision ``--old`` (checked out in a temporary git worktree) and the working tree, ``--runs``
times each, each process started as ``cloud-trainer`` starts (its allocator setting, where the
tree has one), and writes the medians and their ratio under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from shared_schema.bench_results import (
    TUNING_VARIABLES,
    add_results_dir_option,
    git_commit,
    write_result,
)

ROOT = Path(__file__).resolve().parents[1]
TIMES = ("step_seconds", "forward_seconds", "float_step_seconds")  # what bench_step measures

# Run in a tree's own directory, so that its cloud_trainer is the one imported.
_CHILD = """
import json, sys
from pathlib import Path
try:
    from cloud_trainer.memory import keep_freed_memory
except ImportError:
    pass
else:
    keep_freed_memory()
from cloud_trainer.config import load_config
from cloud_trainer.tools.bench_step import bench_step
import os
step = bench_step(load_config(), Path(sys.argv[1]))  # the tuning variables as the tree set them:
tuning = {k: os.environ[k] for k in json.loads(sys.argv[2]) if k in os.environ}
print(json.dumps({**step, "environment": tuning}))
"""


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def _step(tree: Path, video: Path, env: dict[str, str]) -> dict[str, object]:
    command = [sys.executable, "-c", _CHILD, str(video), json.dumps(TUNING_VARIABLES)]
    out = subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: result[k] for k in (*TIMES, "environment")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the revision to compare with")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--video", type=Path, default=ROOT.parent / "shared/videos/vtest.avi")
    add_results_dir_option(parser)
    args = parser.parse_args()
    try:
        old = _git("rev-parse", "--short", "--verify", f"{args.old}^{{commit}}")
    except subprocess.CalledProcessError:
        parser.error(f"--old {args.old}: not a commit of {ROOT} (a hash, tag or branch)")
    env = {**os.environ, "AMS_SHARED_DIR": str(ROOT.parent / "shared")}
    runs = []
    with tempfile.TemporaryDirectory(prefix="step-ab-") as tmp:
        worktree = Path(tmp) / "old"
        _git("worktree", "add", "--detach", str(worktree), old)
        try:
            trees = [(worktree, "old"), (ROOT, "new")]
            for run in range(args.runs):
                for tree, name in trees if run % 2 == 0 else trees[::-1]:  # either goes first
                    runs.append({"tree": name, **_step(tree, args.video.resolve(), env)})
                    print(json.dumps(runs[-1]), file=sys.stderr)
        finally:
            _git("worktree", "remove", "--force", str(worktree))
    medians = {
        tree: {k: statistics.median(r[k] for r in runs if r["tree"] == tree) for k in TIMES}
        for tree in ("old", "new")
    }  # fmt: skip
    results = {
        "commits": {"old": old, "new": git_commit()},
        "runs": runs,
        "medians": medians,
        "new_over_old_step": round(
            medians["new"]["step_seconds"] / medians["old"]["step_seconds"], 3
        ),
    }
    path = write_result("trainer-step-ab", results, args.results_dir)
    print(json.dumps({**medians, "ratio": results["new_over_old_step"], "file": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
