"""The packages form layers, and imports only run down them (README "Layout").

shared_schema (the protocol both sides speak) imports neither side; firmware_configs (device
profiles as data) imports nothing of the project; the device never imports the trainer; and in
the trainer only the command line reaches into its tools. The test reads every module's
imports, the lazy ones inside functions included, so a layer cannot be crossed quietly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("shared_schema", "firmware_configs", "edge_runtime", "cloud_trainer")
# What each package may import of the project, itself included.
MAY_IMPORT = {
    "shared_schema": {"shared_schema"},
    "firmware_configs": {"firmware_configs"},
    "edge_runtime": {"edge_runtime", "shared_schema", "firmware_configs"},
    "cloud_trainer": set(PROJECT),
}
TOOLS = "cloud_trainer.tools"
TOOLS_USERS = ("cloud_trainer.cli", TOOLS)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The absolute module names ``path`` imports (relative imports are not used here)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PROJECT}


def _modules() -> list[tuple[str, Path]]:
    return sorted(
        (_module_name(path), path) for package in PROJECT for path in (ROOT / package).rglob("*.py")
    )


@pytest.mark.parametrize("package", PROJECT)
def test_imports_run_down_the_layers(package: str) -> None:
    crossings = [
        f"{module} imports {name}"
        for module, path in _modules()
        if module.split(".")[0] == package
        for name in sorted(_imports(path))
        if name.split(".")[0] not in MAY_IMPORT[package]
    ]
    assert crossings == []


def test_only_the_command_line_uses_the_trainer_tools() -> None:
    users = {
        module
        for module, path in _modules()
        if any(name == TOOLS or name.startswith(f"{TOOLS}.") for name in _imports(path))
    }
    assert {m for m in users if not m.startswith(TOOLS_USERS)} == set()


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from cloud_trainer.session import Session\n")
    assert _imports(module) == {"cloud_trainer.session", "cloud_trainer.session.Session"}
