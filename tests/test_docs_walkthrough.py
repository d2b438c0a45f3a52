"""The README and every docs page, walked as a newcomer does: each shell block, in order.

Each doc runs in its own fresh folder (``docs_walkthrough.Walk``), block after block; a
block fails the walk if it exits non-zero (or, marked ``fails``, exits 0) or prints a
traceback. Skipped blocks say why in the doc, and are printed. The walks that train or
fit take minutes together on 2 cores and are marked slow; the rest run in the fast suite.
Two docs walk at a time (:data:`WORKERS`), each in its own folder with its own ports.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from docs_walkthrough import REPO, TRACEBACK, Walk, walk_blocks

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Walks at once: CI's cores (a walk is mostly one process at a time).
WORKERS = 2
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


def walk_doc(doc: Path, root: Path) -> tuple[list[str], str | None]:
    """Walk ``doc`` in a fresh folder under ``root``: (a line per block, why it failed)."""
    lines, ran = [], []
    with Walk(root) as walk:
        for block in walk_blocks(doc):
            if block.mode == "skip":
                lines.append(f"  {block.where()}: skipped — {block.reason}")
                continue
            outcome = walk.run(block)
            lines.append(
                f"  {block.where()}: {outcome.seconds:.1f} s ({outcome.cpu_seconds:.1f} s CPU)"
            )
            if outcome.problem() is not None:
                return lines, outcome.report() + "\n" + "\n".join(lines)
            ran.append(outcome)
    # Servers a block started write on until the doc is done: their output too.
    late = [o for o in ran if TRACEBACK in o.output()]
    return lines, late[0].report() if late else None


@pytest.fixture(scope="module")
def walks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[tuple[list[str], str | None]]]]:
    """Every selected doc's walk, started at once on WORKERS threads (each walk is its own
    processes, one doc after another: the docs overlap, the blocks of a doc do not)."""
    docs = [
        item.callspec.params["doc"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_walk_doc"
    ]
    with ThreadPoolExecutor(WORKERS) as pool:
        yield {d.name: pool.submit(walk_doc, d, tmp_path_factory.mktemp(d.stem)) for d in docs}
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("doc", [_param(d) for d in DOCS])
def test_walk_doc(doc: Path, walks: dict[str, Future[tuple[list[str], str | None]]]) -> None:
    lines, failure = walks[doc.name].result()
    assert failure is None, failure
    print(f"\n{doc.name}:\n" + "\n".join(lines))
