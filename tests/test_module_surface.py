"""Modules meet through their public names: no module imports another's private (``_``) name
or reaches into one through its module object, in the house, its tests or its benches."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tuner", "data", "models")


def private_uses(path: Path) -> list[str]:
    """``from <project module> import _x`` and ``<project module alias>._x`` in ``path``."""
    tree = ast.parse(path.read_text())
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level \
                and node.module.split(".")[0] in PACKAGES:
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports "
                                 f"{node.module}.{a.name}")
                aliases.add(a.asname or a.name)  # may be a submodule: checked below
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    aliases.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__") and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and _is_module(node.value.id, path):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses "
                         f"{node.value.id}.{node.attr}")
    return found


def _is_module(name: str, path: Path) -> bool:
    """Whether ``name`` was bound to a project module in ``path`` (not a class or function
    imported by name, whose private attributes are its own business)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if (a.asname or a.name) == name:
                    sub = ROOT / Path(*node.module.split("."), a.name)
                    return sub.is_dir() or sub.with_suffix(".py").is_file()
        elif isinstance(node, ast.Import):
            for a in node.names:
                if (a.asname or a.name.split(".")[0]) == name:
                    return True
    return False


def test_no_module_uses_another_modules_private_names():
    files = [p for folder in (*PACKAGES, "tests", "bench") for p in (ROOT / folder).rglob("*.py")]
    bad = [use for p in sorted(files) for use in private_uses(p)]
    assert not bad, "\n".join(bad)


def test_the_check_sees_both_kinds_of_use(tmp_path, monkeypatch):
    """Not vacuous: an imported private name and a private attribute of a module are found."""
    bad = ROOT / "tests" / "_surface_probe.py"
    bad.write_text("from tuner.service.stages import _run_round\n"
                   "from tuner.view import load\n"
                   "x = load._finite\n")
    try:
        found = private_uses(bad)
    finally:
        bad.unlink()
    assert len(found) == 2 and "_run_round" in found[0] and "load._finite" in found[1]
