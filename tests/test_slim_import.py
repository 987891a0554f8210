"""The device package must run with the ``edge`` extra alone (SPEC §2): never torch or onnx.

The test imports every module of the device-side packages in a fresh interpreter where any
third-party module outside the edge extra's dependency closure fails to import, exactly as it
would on a device that installed only ``amstream[edge]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DEVICE_PACKAGES = ("edge_runtime", "shared_schema", "firmware_configs")


def _closure(root: str, extra: str) -> set[str]:
    """Distributions needed by ``root[extra]``, transitively (environment markers honoured)."""
    wanted, todo = set(), [(root, extra)]
    while todo:
        name, with_extra = todo.pop()
        key = canonicalize_name(name)
        if key in wanted:
            continue
        wanted.add(key)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": with_extra}):
                todo.append((req.name, ""))
    return wanted


def _allowed_modules() -> list[str]:
    dists = _closure("amstream", "edge")
    return sorted(
        {
            mod
            for mod, owners in packages_distributions().items()
            if any(canonicalize_name(d) in dists for d in owners)
        }
        | set(DEVICE_PACKAGES)
    )


PROBE = r"""
import importlib, importlib.abc, importlib.machinery, json, pkgutil, sys, sysconfig
allowed = set(json.loads(sys.argv[1]))
site_dirs = tuple({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
blocked = []

class EdgeExtraOnly(importlib.abc.MetaPathFinder):
    # Third-party top-level modules (those installed in site-packages) must belong to the edge
    # extra's closure; the trainer package is never available on a device.
    def find_spec(self, name, path, target=None):
        if "." in name or name in allowed:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        third_party = spec is not None and (spec.origin or "").startswith(site_dirs)
        if name == "cloud_trainer" or third_party:
            blocked.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (not in the edge extra)",
                                      name=name)
        return None

sys.meta_path.insert(0, EdgeExtraOnly())
for pkg in json.loads(sys.argv[2]):
    module = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(module.__path__, pkg + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {"torch", "onnx"})
device = tuple(json.loads(sys.argv[2]))
print(json.dumps({"loaded": loaded, "blocked": sorted(set(blocked)),
                  "modules": sorted(m for m in sys.modules if m.startswith(device))}))
"""


def test_device_packages_import_with_the_edge_extra_alone():
    allowed = _allowed_modules()
    assert "torch" not in allowed and "onnx" not in allowed
    assert {"numpy", "paho", "pydantic", "av", "ai_edge_litert"} <= set(allowed)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(allowed), json.dumps(DEVICE_PACKAGES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert "edge_runtime.cli" in result["modules"]
    assert "shared_schema.endpoint" in result["modules"]


def test_probe_would_catch_a_torch_import(tmp_path):
    """The guard itself: a module that imports torch fails under the probe."""
    pkg = tmp_path / "sneaky_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import torch\n")
    # sneaky_pkg is allowed itself; its torch import must be refused.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            json.dumps([*_allowed_modules(), "sneaky_pkg"]),
            json.dumps(["sneaky_pkg"]),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode != 0
    assert "not in the edge extra" in out.stderr
