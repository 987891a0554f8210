"""Compile an int8 TFLite model for the Edge TPU with `edgetpu_compiler`, where it is installed.

The compiler is a Debian package from Coral's own repository (``edgetpu-compiler``, x86-64
only), so most trainers do not have it: then the export says so and delivers the int8 model,
which a Coral device runs through the same delegate, on its CPU. When it runs, the compiler's
summary says how many operations the Edge TPU takes; operations after the first unsupported one
fall back to the CPU, which is what a deployment most needs to know.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

COMPILER = "edgetpu_compiler"
INSTALL_HINT = (
    "install the edgetpu-compiler Debian package from Coral's repository (x86-64) to compile it"
)
_ON_TPU = re.compile(r"Number of operations that will run on Edge TPU:\s*(\d+)")
_ON_CPU = re.compile(r"Number of operations that will run on CPU:\s*(\d+)")
# A row of the operator table: name, count, status ("Mapped to Edge TPU" or why not).
_TABLE_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$", re.MULTILINE)
_MAPPED = "Mapped to Edge TPU"


@dataclass(frozen=True)
class OperationCounts:
    on_tpu: int
    on_cpu: int


@dataclass(frozen=True)
class EdgeTpuResult:
    compiled: bool
    model: Path  # the compiled model, or the int8 model when the compiler is absent or fails
    operations: OperationCounts | None
    message: str
    log: str = ""


def parse_compiler_log(text: str) -> OperationCounts | None:
    """Operations on the Edge TPU and on the CPU, from the compiler's summary.

    The summary states both counts when some operations stay on the CPU; otherwise the operator
    table (printed with -s) is summed by status. None when the text has neither.
    """
    tpu, cpu = _ON_TPU.search(text), _ON_CPU.search(text)
    if tpu and cpu:
        return OperationCounts(int(tpu.group(1)), int(cpu.group(1)))
    rows = _TABLE_ROW.findall(text)
    if not rows:
        return None
    on_tpu = sum(int(count) for _, count, status in rows if status == _MAPPED)
    on_cpu = sum(int(count) for _, count, status in rows if status != _MAPPED)
    return OperationCounts(on_tpu, on_cpu)


def compile_model(model: Path, out_dir: Path, *, timeout_s: float = 600.0) -> EdgeTpuResult:
    """Compile `model` into `out_dir` (as <stem>_edgetpu.tflite) when the compiler is on PATH."""
    compiler = shutil.which(COMPILER)
    if compiler is None:
        return EdgeTpuResult(
            compiled=False,
            model=model,
            operations=None,
            message=f"{COMPILER} is not on PATH: delivering the int8 model {model.name}"
            f" uncompiled (it runs on the CPU); {INSTALL_HINT}",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(
            [compiler, "-s", "-o", str(out_dir), str(model)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        log = run.stdout + run.stderr
        failed = f"exit {run.returncode}" if run.returncode != 0 else ""
    except subprocess.TimeoutExpired:
        log, failed = "", f"no result within {timeout_s:.0f} s"
    compiled = out_dir / f"{model.stem}_edgetpu.tflite"
    if failed or not compiled.is_file():
        return EdgeTpuResult(
            compiled=False,
            model=model,
            operations=None,
            message=f"{COMPILER} failed ({failed or 'no output file'}): delivering the int8"
            f" model {model.name} uncompiled",
            log=log,
        )
    operations = parse_compiler_log(log)
    summary = (
        f"{operations.on_tpu} operations on the Edge TPU, {operations.on_cpu} on the CPU"
        if operations
        else "operation counts not found in its output"
    )
    return EdgeTpuResult(True, compiled, operations, f"compiled with {COMPILER}: {summary}", log)
