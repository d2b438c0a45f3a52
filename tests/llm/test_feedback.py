"""`dynroute.llm.feedback` and `dynroute llm update`: feedback rows of a decision log become
outcome rows, and the refit router moves the way the feedback says.

The proxy that writes such logs is tested in tests/serve/test_feedback.py; here the log is
written as the proxy writes it (the same fields), so these tests need no server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynroute.cli import app
from dynroute.llm.data import OutcomeTable, write_wide_jsonl
from dynroute.llm.feedback import SKIP_REASONS, feedback_table, update_router
from dynroute.llm.routers import load_router, make_query_router

SUMS = [f"what is {a} plus {b}" for a in range(6) for b in range(4)]
POEMS = [f"write a poem about {w}" for w in ("sea", "sky", "tree", "rock", "wind", "snow")]
#: questions the base table never saw; the router sends them to the cheap model
INTEGRALS = [f"what is the integral of x to the power {n}" for n in range(2, 8)]


def base_table() -> OutcomeTable:
    """Sums: both models right; poems: only the big one; big costs 10x."""
    quality = [[1.0, 1.0]] * len(SUMS) + [[0.0, 1.0]] * len(POEMS)
    return OutcomeTable.from_rows(
        SUMS + POEMS, ["small", "big"], quality, [[0.001, 0.01]] * len(quality)
    )


def decision(rid: str, query: str | None, model: str = "small", status: int = 200) -> dict:
    """A decision row as `llm serve --log-queries` writes it (None: without --log-queries)."""
    cost = 0.001 if model == "small" else 0.01
    row = {"response_id": rid, "query_sha256": "0" * 64, "chosen": f"{model}-backend",
           "router_model": model, "status": status, "cost": cost}  # fmt: skip
    if query is not None:
        row["query"] = query
    return row


def feedback(rid: str, score: float, model: str | None = None) -> dict:
    return {"kind": "feedback", "response_id": rid, "score": score, "model": model}


def write_log(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("feedback")
    router = make_query_router("knn:k=3").fit(base_table())
    router.lam = 20.0  # a poem is worth the big model (1 > 20 * 0.009), a sum is not
    table = root / "table.jsonl"
    write_wide_jsonl(base_table(), table)
    return {"root": root, "router": router.save(root / "knn"), "table": table}


def test_negative_feedback_on_the_cheap_model_moves_its_queries_to_the_big_one(fitted):
    log = [decision(f"c{i}", q) for i, q in enumerate(INTEGRALS)]
    log += [feedback(f"c{i}", 0.0) for i in range(len(INTEGRALS))]
    path = write_log(fitted["root"] / "negative.jsonl", log)
    before = load_router(fitted["router"]).route(INTEGRALS)
    out = fitted["root"] / "updated"
    result = update_router(fitted["router"], path, out, fitted["table"])
    after = load_router(out)
    assert before == ["small"] * len(INTEGRALS)
    assert after.route(INTEGRALS) == ["big"] * len(INTEGRALS)
    assert after.route(["what is 3 plus 2", "write a poem about fire"]) == ["small", "big"]
    assert result["used"] == result["feedback"] == len(INTEGRALS) and result["skipped"] == {}
    assert result["rows"] == len(SUMS) + len(POEMS) + len(INTEGRALS)
    assert after.to_dict() == load_router(fitted["router"]).to_dict() and after.lam == 20.0


def test_unusable_feedback_is_counted_by_reason(fitted):
    log = [
        decision("ok", INTEGRALS[0]),
        decision("hashed", None),  # served without --log-queries
        decision("failed", INTEGRALS[1], status=503),
        decision("big", SUMS[0], model="big"),  # tells big-backend serves the model big
        feedback("ok", 0.0),
        feedback("ok", 1.0, model="big-backend"),  # a backend's name: its router model
        feedback("hashed", 0.0),
        feedback("failed", 0.0),
        feedback("gone", 0.0),
        feedback("ok", 1.0, model="nobody"),
        feedback("ok", "great"),  # written by hand: the proxy takes only 0..1
    ]
    path = write_log(fitted["root"] / "mixed.jsonl", log)
    path.write_text(path.read_text() + '{"torn": ')  # a crash mid-line
    got = feedback_table(path, load_router(fitted["router"]))
    assert got.feedback == 7 and got.used == 2 and got.unreadable == 1
    assert dict(got.skipped) == {SKIP_REASONS[k]: 1 for k in SKIP_REASONS}
    assert got.table is not None and got.table.queries == (INTEGRALS[0],)
    assert got.table.quality.tolist() == [[0.0, 1.0]] and got.scored.tolist() == [[True, True]]


def test_an_update_replaces_its_out_folder_whole(fitted):
    path = write_log(fitted["root"] / "one.jsonl", [decision("a", SUMS[0]), feedback("a", 1.0)])
    out = fitted["root"] / "again"
    for _ in range(2):  # the second write replaces the first
        update_router(fitted["router"], path, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "tensors.safetensors"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".again")]
    (fitted["root"] / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken exists and is not a fitted query router"):
        update_router(fitted["router"], path, fitted["root"] / "taken")


def test_bad_input_is_one_line_naming_the_file(fitted):
    """A missing log, a log without (usable) feedback, a missing router: exit 2, one line
    (in this process, through typer's runner; tests/cli/test_errors.py runs a subprocess)."""
    root = fitted["root"]
    quiet = write_log(root / "quiet.jsonl", [decision("a", SUMS[0])])
    hashed = write_log(root / "hashed.jsonl", [decision("a", None), feedback("a", 0.0)])
    cases = {
        "no log": ([fitted["router"], "--log", root / "nope.jsonl"], "nope.jsonl"),
        "no feedback": ([fitted["router"], "--log", quiet], "quiet.jsonl: no feedback rows"),
        "no text": ([fitted["router"], "--log", hashed], "--log-queries"),
        "no router": ([root / "gone", "--log", quiet], "gone"),
        "no table": ([fitted["router"], "--log", hashed, "--table", root / "t.csv"], "t.csv"),
    }
    for i, (name, (args, needle)) in enumerate(cases.items()):
        argv = ["llm", "update", *map(str, args), "--out", str(root / f"out-{i}")]
        result = CliRunner().invoke(app, argv)
        line = " ".join(result.stderr.split())  # one line, however the runner wrapped it
        assert result.exit_code == 2 and line.startswith("error: "), (name, result.output)
        assert needle in line and "Traceback" not in result.output, (name, line)
        assert not (root / f"out-{i}").exists()
