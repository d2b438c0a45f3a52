"""The README and every docs page, walked as a newcomer does: each shell block, in order.

Each doc runs in its own fresh folder (``docs_walkthrough.Walk``), block after block; a
block fails the walk if it exits non-zero (or, marked ``fails``, exits 0) or prints a
traceback. Skipped blocks say why in the doc, and are printed. The walks that train or
fit take minutes together on 2 cores and are marked slow; the rest run in the fast suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from docs_walkthrough import REPO, TRACEBACK, Walk, walk_blocks

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Docs whose walk takes seconds (the rest train, fit or serve: slow).
FAST = {"architecture.md", "routing.md", "performance.md"}


def _param(doc: Path) -> object:
    marks = [] if doc.name in FAST else [pytest.mark.slow]
    return pytest.param(doc, marks=marks, id=doc.name)


def test_every_doc_with_shell_blocks_runs_at_least_one() -> None:
    idle = []
    for doc in DOCS:
        shell = [b for b in walk_blocks(doc) if b.mode != "file"]
        if shell and all(b.mode == "skip" for b in shell):
            idle.append(doc.name)
    assert not idle, f"every shell block of {idle} is skipped: make one runnable"


@pytest.mark.parametrize("doc", [_param(d) for d in DOCS])
def test_walk_doc(doc: Path, tmp_path: Path) -> None:
    lines, ran = [], []
    with Walk(tmp_path) as walk:
        for block in walk_blocks(doc):
            if block.mode == "skip":
                lines.append(f"  {block.where()}: skipped — {block.reason}")
                continue
            outcome = walk.run(block)
            lines.append(
                f"  {block.where()}: {outcome.seconds:.1f} s ({outcome.cpu_seconds:.1f} s CPU)"
            )
            problem = outcome.problem()
            assert problem is None, outcome.report() + "\n" + "\n".join(lines)
            ran.append(outcome)
    # Servers a block started write on until the doc is done: their output too.
    late = [o for o in ran if TRACEBACK in o.output()]
    assert not late, late[0].report()
    print(f"\n{doc.name}:\n" + "\n".join(lines))
