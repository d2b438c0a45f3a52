"""The map in docs/architecture.md is true: layering, no file circles, no private imports.

The layer table is read from the doc itself, so the doc and this test cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from architecture import imports_of, measure, module_name, package_of

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dynroute"
DOC = ROOT / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """package -> layer, from the doc's table (`| 3 | layers | ... |`)."""
    table: dict[str, int] = {}
    for level, packages in re.findall(r"^\| (\d+) \| ([a-z_, ]+) \|", DOC.read_text(), re.M):
        for package in packages.split(","):
            table[package.strip()] = int(level)
    return table


def package_imports() -> list[tuple[str, str, str]]:
    """(importing module, its package, imported package) for every import inside dynroute."""
    modules = {module_name(f, SRC): f for f in SRC.rglob("*.py")}
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        for target, _ in imports_of(tree, module, path.name == "__init__.py", set(modules)):
            if target.startswith("dynroute.") and package_of(target) != package_of(module):
                edges.append((module, package_of(module), package_of(target)))
    return edges


def test_every_package_is_on_the_map():
    table = layers()
    on_disk = {
        p.stem if p.is_file() else p.name
        for p in SRC.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py")
    } - {"__init__"}
    assert on_disk - set(table) == set(), "add the package to docs/architecture.md's table"
    assert set(table) - on_disk == set(), "the doc names a package that does not exist"


def test_imports_point_down():
    table = layers()
    wrong = [
        f"{module} (layer {table[src]}) imports dynroute.{dst} (layer {table[dst]})"
        for module, src, dst in package_imports()
        if src in table and dst in table and table[dst] >= table[src]
    ]
    assert wrong == [], "see docs/architecture.md for the allowed directions"


def test_no_file_circles():
    assert measure(SRC)["file_circle_list"] == []


def test_no_private_name_crosses_a_module():
    assert measure(SRC)["private_import_list"] == []


def test_functions_stay_short():
    # A reader should not meet a function longer than a screenful or two; split by step.
    long = [
        f"{f['at']} {f['function']} ({f['lines']} lines)"
        for f in measure(SRC)["long_function_list"]
    ]
    assert long == [], "split them into named steps (benchmarks/architecture.py lists them)"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_loaded_by_name_from_below(path):
    # Only the registries (which import their own package and the plugins) and the CLI
    # (which registers every command module) import modules by name.
    allowed = {SRC / "common" / "registry.py", SRC / "cli.py"}
    if path in allowed:
        return
    tree = ast.parse(path.read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
    ]
    assert calls == [], f"{path.name}: register with a Registry instead of import_module"
