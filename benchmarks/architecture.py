"""The house's structural numbers: source lines, long functions, import circles, private imports.

    python benchmarks/architecture.py [--src src/dynroute] [--json FILE]

Counted with the standard library's `ast` only, so anyone can rerun it on any commit:

- ``src_lines``: physical lines of every ``.py`` file under the package; ``code_lines``: the
  lines that hold code (no docstring, comment or blank line);
- ``long_functions``: every ``def`` (nested ones counted on their own too) whose span
  (``end_lineno - lineno + 1``, decorators excluded) is over 80 lines;
- ``file_circles``: pairs of modules that import each other, at module level or inside
  a function (a lazy import is still an edge a reader has to follow);
- ``private_imports``: ``from a.b import _name`` where ``_name`` belongs to another module
  (``cross_package`` when the two modules are in different top-level packages of dynroute).

The layering itself (which package may import which) is checked by
``tests/test_architecture.py``, against the table in ``docs/architecture.md``.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import tokenize
from pathlib import Path

LONG = 80


def module_name(path: Path, root: Path) -> str:
    """``src/dynroute/routing/top_k.py`` → ``dynroute.routing.top_k``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """The top-level package a module belongs to: ``dynroute.routing.top_k`` → ``routing``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(tree: ast.Module, module: str, is_package: bool, known: set[str]):
    """Yield ``(target_module, imported_name | None)`` for every import in a file."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, is_package, node)
            for alias in node.names:
                full = f"{target}.{alias.name}"
                # `from pkg import submodule` is an edge to the submodule
                yield (full, None) if full in known else (target, alias.name)


def code_lines(text: str) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring.

    Example:
        >>> code_lines("def f():\\n    'Doc.'\\n    # why\\n    return 1\\n")
        2
    """
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = body[0] if body else None
            value = getattr(first, "value", None)
            if isinstance(first, ast.Expr) and isinstance(value, ast.Constant | ast.JoinedStr):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in skip and tok.type != tokenize.ENDMARKER:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docstrings)
    return len(lines)


def import_circles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Groups of modules that reach each other through imports (strongly connected, > 1).

    A package ``__init__`` re-exporting its own modules is not a circle a reader follows,
    so edges between a package and its own submodules are left out.

    Example:
        >>> [sorted(c) for c in import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})]
        [['a', 'b', 'c']]
    """
    graph = {
        a: {b for b in targets if not (b.startswith(a + ".") or a.startswith(b + "."))}
        for a, targets in edges.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def measure(src: Path) -> dict:
    files = sorted(src.rglob("*.py"))
    modules = {module_name(f, src): f for f in files}
    known = set(modules)
    lines = code = 0
    long_functions: list[dict] = []
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[dict] = []
    for module, path in modules.items():
        text = path.read_text()
        lines += len(text.splitlines())
        code += code_lines(text)
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                span = node.end_lineno - node.lineno + 1
                if span > LONG:
                    where = f"{path.relative_to(src.parent)}:{node.lineno}"
                    long_functions.append({"function": node.name, "lines": span, "at": where})
        is_package = path.name == "__init__.py"
        for target, name in imports_of(tree, module, is_package, known):
            if not target.startswith("dynroute"):
                continue
            if target in known and target != module:
                edges[module].add(target)
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                private.append(
                    {
                        "module": module,
                        "imports": f"{target}.{name}",
                        "cross_package": package_of(target) != package_of(module),
                    }
                )
    circles = [" ⇄ ".join(sorted(c)) for c in import_circles(edges)]
    long_functions.sort(key=lambda f: -f["lines"])
    return {
        "files": len(files),
        "src_lines": lines,
        "code_lines": code,
        "long_functions": len(long_functions),
        "long_function_list": long_functions,
        "file_circles": len(circles),
        "file_circle_list": circles,
        "private_imports": len(private),
        "private_imports_cross_package": sum(p["cross_package"] for p in private),
        "private_import_list": private,
    }


ROWS = {
    "files": "Python files",
    "src_lines": "src lines",
    "code_lines": "... of them code (no docstring, comment, blank)",
    "long_functions": f"functions over {LONG} lines",
    "file_circles": "file circles",
    "private_imports": "private names imported from another module",
    "private_imports_cross_package": "... from another package",
}


def markdown(before: dict, after: dict) -> str:
    """A before → after table of the headline numbers.

    Example:
        >>> print(markdown({k: 2 for k in ROWS}, {k: 1 for k in ROWS}).splitlines()[2])
        | Python files | 2 | 1 |
    """
    lines = ["| measure | before | after |", "|---|---|---|"]
    lines += [f"| {label} | {before[k]:,} | {after[k]:,} |" for k, label in ROWS.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("src/dynroute"))
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument(
        "--before", type=Path, default=None, help="a JSON of an earlier run: print before -> after"
    )
    args = parser.parse_args()
    result = measure(args.src)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    if args.before:
        print(markdown(json.loads(args.before.read_text()), result))
    print(f"files {result['files']}, src lines {result['src_lines']} ({result['code_lines']} code)")
    print(f"functions over {LONG} lines: {result['long_functions']}")
    for f in result["long_function_list"]:
        print(f"  {f['lines']:4d}  {f['function']}  {f['at']}")
    print(f"file circles: {result['file_circles']}")
    for c in result["file_circle_list"]:
        print(f"  {c}")
    print(
        f"private imports across modules: {result['private_imports']} "
        f"({result['private_imports_cross_package']} across packages)"
    )
    for p in result["private_import_list"]:
        print(f"  {'PKG ' if p['cross_package'] else '    '}{p['module']} <- {p['imports']}")


if __name__ == "__main__":
    main()
