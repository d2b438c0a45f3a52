"""`dynroute llm collect` against real `dynroute serve` processes on 127.0.0.1: the table it
writes is what `llm eval` reads; a killed run resumes without sending a row twice; a
backend that is down is recorded as missing, never as quality 0; the scoring modes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dynroute.cli import app
from dynroute.common.net import free_port
from dynroute.llm.data import TableError, load_table
from dynroute.serve.backends import parse_backend_args
from dynroute.serve.collect import (
    JUDGE_PROMPT,
    collect,
    judge_rating,
    read_prompts,
    score_answer,
)
from serve_helpers import BIG, SMALL, FakeBackend
from serving_procs import cli_env, start_all, stop_all

PRICES = """
[backends.small]
prompt_price = 0.5
completion_price = 1.0
[backends.big]
prompt_price = 10.0
completion_price = 30.0
[backends.late]
model = "small"
prompt_price = 0.5
completion_price = 1.0
"""


@pytest.fixture(scope="module")
def servers(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    serve = ["serve", "--threads", "1", "--batch-wait-ms", "5"]
    procs = start_all(
        [[*serve, str(tiny_models[m]), "--name", m] for m in (SMALL, BIG)],
        tmp_path_factory.mktemp("collect-logs"),
    )
    try:
        yield {SMALL: procs[0].url, BIG: procs[1].url}
    finally:
        stop_all(procs)


def write_prompts(path: Path, n: int) -> Path:
    # The tiny models babble: a regex reference that some answers match gives both
    # qualities; a numeric line checks the other path.
    lines = [
        {
            "prompt": f"tell me about item {i}",
            "reference": "[aeiou]{2}",
            "score": "regex",
            "id": f"q{i}",
        }
        for i in range(n - 1)
    ]
    lines.append({"prompt": "what is 2 plus 2", "reference": "4", "score": "numeric"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def prices_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES)
    return path


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_collect(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["llm", "collect", *args, "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_collect_writes_a_table_llm_eval_reads(servers: dict[str, str], tmp_path: Path) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 12), tmp_path / "table.jsonl"
    backends = [f"{m}={url}" for m, url in servers.items()]
    args = [
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--prices",
        str(prices_file(tmp_path)),
        "--max-tokens",
        "4",
        *[x for b in backends for x in ("--backend", b)],
    ]
    summary = run_collect(args)
    assert (summary["rows"], summary["missing"], summary["sent"]) == (24, 0, 24)
    rows = rows_of(out)
    assert Counter((r["query"], r["model"]) for r in rows) == Counter(
        {(q, m): 1 for q in {r["query"] for r in rows} for m in (SMALL, BIG)}
    )
    for r in rows:  # priced from usage: the big model's tokens cost 10x / 30x
        price = (0.5, 1.0) if r["model"] == SMALL else (10.0, 30.0)
        want = (r["prompt_tokens"] * price[0] + r["completion_tokens"] * price[1]) / 1e6
        assert r["cost"] == pytest.approx(want) and r["cost"] > 0
        assert r["quality"] in (0.0, 1.0) and r["latency_s"] > 0 and r["completion_tokens"] <= 4
    assert summary["models"][BIG]["cost"] > summary["models"][SMALL]["cost"]
    table = load_table(out)
    assert table.quality.shape == (12, 2) and set(table.models) == {SMALL, BIG}
    again = run_collect(args)  # everything recorded: nothing sent, nothing added
    assert again["sent"] == 0 and len(rows_of(out)) == 24
    # as a kill leaves it: the last rows not written, the one being written cut short
    kept = out.read_text().splitlines(keepends=True)[:19]
    out.write_text("".join(kept) + kept[-1][:25])
    resumed = run_collect(args)
    assert resumed["sent"] == 5 and len(rows_of(out)) == 24
    assert set(Counter((r["query"], r["model"]) for r in rows_of(out)).values()) == {1}
    result = CliRunner().invoke(
        app,
        [
            "llm",
            "eval",
            "--train",
            str(out),
            "--query-router",
            "knn:k=3",
            "--json",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(result.stdout)["aiq"] <= 1.0


def test_a_down_backend_is_missing_and_a_rerun_fills_it(
    servers: dict[str, str], tmp_path: Path
) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 6), tmp_path / "table.jsonl"
    prices = str(prices_file(tmp_path))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    base = [
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--prices",
        prices,
        "--max-tokens",
        "4",
        "--backend",
        f"small={servers[SMALL]}",
    ]
    summary = run_collect([*base, "--backend", f"late={dead}", "--retries", "1"])
    assert summary["missing"] == 6 and summary["models"]["late"]["answered"] == 0
    late = [r for r in rows_of(out) if r["model"] == "late"]
    assert len(late) == 6 and all(r["quality"] is None and r["missing"] for r in late)
    with pytest.raises(TableError, match="every query has a missing outcome"):
        load_table(out)  # never a table of zeros for the down backend
    # the backend is up now (the small server, by its model id): only the gaps are sent
    filled = run_collect([*base, "--backend", f"late={servers[SMALL]}"])
    assert (filled["sent"], filled["missing"], filled["rows"]) == (6, 0, 12)
    assert load_table(out).quality.shape == (6, 2)


def test_missing_rows_drop_their_query_with_a_warning(tmp_path: Path) -> None:
    rows = [{"query": q, "model": m, "quality": 1.0, "cost": 0.1} for q in "abc" for m in "xy"]
    rows[1] = {"query": "a", "model": "y", "quality": None, "cost": None, "missing": "down"}
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match="1 of 3 queries dropped"):
        table = load_table(path)
    assert table.queries == ("b", "c") and table.quality.shape == (2, 2)
    rows.append({"query": "a", "model": "y", "quality": 0.0, "cost": 0.2})  # a rerun's answer
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_table(path).quality[0].tolist() == [1.0, 0.0]


@pytest.mark.slow  # a CLI process started and killed: seconds on a busy machine
def test_a_killed_run_resumes_without_sending_a_row_twice(
    servers: dict[str, str], tmp_path: Path
) -> None:
    prompts, out = write_prompts(tmp_path / "p.jsonl", 40), tmp_path / "table.jsonl"
    args = [
        "llm",
        "collect",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--prices",
        str(prices_file(tmp_path)),
        "--max-tokens",
        "4",
        "--concurrency",
        "2",
        "--backend",
        f"small={servers[SMALL]}",
        "--backend",
        f"big={servers[BIG]}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynroute.cli", *args, "--no-progress"],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(rows_of_safe(out)) < 10):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = len(out.read_text().splitlines())
    assert 10 <= before < 80, "the run ended before it was killed: make it longer"
    with out.open("a") as f:  # a line cut short, as a kill during a write leaves it
        f.write('{"query": "tell me ab')
    summary = run_collect(args[2:])
    rows = rows_of(out)
    assert summary["sent"] == 80 - before and len(rows) == 80
    assert set(Counter((r["query"], r["model"]) for r in rows).values()) == {1}


def rows_of_safe(path: Path) -> list[str]:
    return [line for line in path.read_text().split("\n")[:-1] if line.strip()]


class Judge(FakeBackend):
    """A judge: rates 7 an answer that says 'four', else 2 (an LLM judge stands in here)."""

    def answer(self, request: dict[str, Any]) -> bytes:
        text = request["messages"][-1]["content"]
        rating = 7 if "four" in text.split("[The Start of Assistant's Answer]")[1] else 2
        message = {"role": "assistant", "content": f"Fine. Rating: [[{rating}]]"}
        usage = {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}
        return json.dumps({"choices": [{"message": message}], "usage": usage}).encode()


def test_a_judge_rates_lines_without_a_reference(servers: dict[str, str], tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        prompts = tmp_path / "p.jsonl"
        prompts.write_text('{"prompt": "say four"}\n')
        config = {SMALL: {"prompt_price": 1.0, "completion_price": 1.0}}
        backends = parse_backend_args([f"small={servers[SMALL]}"], config)
        judge = parse_backend_args([f"judge=http://127.0.0.1:{server.server_port}"], {})[0]
        out = tmp_path / "t.jsonl"
        summary = asyncio.run(
            collect(read_prompts(prompts), backends, out, judge=judge, max_tokens=4)
        )
        row = rows_of(out)[0]
        assert summary["missing"] == 0 and row["score"] == "judge"
        assert row["quality"] == pytest.approx(1 / 9 if "four" not in row["answer"] else 6 / 9)
    finally:
        server.shutdown()


def test_scoring_modes() -> None:
    assert score_answer("exact", "  The  Answer. ", "the answer") == 1.0
    assert score_answer("exact", "the answer is", "the answer") == 0.0
    assert score_answer("numeric", "3 apples, then 5: 8 in all.", "#### 8") == 1.0
    assert score_answer("numeric", "1,234.5", "1234.50") == 1.0
    assert score_answer("numeric", "8 or 9", "8") == 0.0  # the last number counts
    assert score_answer("numeric", "-3", "-3.0") == 1.0
    assert score_answer("choice", "Answer: C", "C") == 1.0
    assert score_answer("choice", "(d) because", "D") == 1.0
    assert score_answer("choice", "I think it is (A).", "(B)") == 0.0
    assert score_answer("choice", "no idea", "A") == 0.0
    assert score_answer("regex", "Paris, France", r"^paris") == 0.0
    assert score_answer("regex", "Paris, France", r"(?i)^paris") == 1.0
    assert judge_rating("Rating: [[3]] ... no, [[9]]") == pytest.approx(8 / 9)
    assert judge_rating("Rating: 9") is None and judge_rating("[[0]]") is None
    assert "{question}" in JUDGE_PROMPT and "{answer}" in JUDGE_PROMPT
    with pytest.raises(ValueError, match="unknown score mode"):
        score_answer("fuzzy", "a", "a")


def test_prompts_are_read_once_each_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "reference": 4}\n\n{"prompt": "a", "reference": "5"}\n')
    (only,) = read_prompts(path, "numeric")
    assert (only.query, only.reference, only.line) == ("a", "4", 1)
    for text, needle in [
        ('{"prompt": "a"}\n{"prompt": \n', "line 2 is not valid JSON"),
        ('{"text": "a"}\n', 'line 1: needs a JSON object with a non-empty "prompt"'),
        ('{"prompt": "a", "reference": "x", "score": "fuzzy"}\n', "unknown score 'fuzzy'"),
        ('{"prompt": "a", "reference": "(", "score": "regex"}\n', "not a valid regex"),
        ('{"prompt": "a", "score": "exact"}\n', 'needs a "reference"'),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
            read_prompts(path)


def test_bad_input_fails_in_one_line(tmp_path: Path) -> None:
    """A bad prompts line in a real process (what a user sees); the other cases in this
    process (the same error path: `options.command`), as tests/cli/test_errors.py runs the
    missing prompts file in a process of its own."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "reference": "1"}\n{"prompt": "b", oops}\n')
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a"}\n')
    ref = tmp_path / "ref.jsonl"
    ref.write_text('{"prompt": "a", "reference": "1"}\n')
    out, prices = ["--out", str(tmp_path / "t.jsonl")], ["--prices", str(prices_file(tmp_path))]
    proc = subprocess.run(
        [sys.executable, "-m", "dynroute.cli", "llm", "collect", "--prompts", str(bad),
         "--backend", "a=http://h", *out],
        capture_output=True, text=True, env={**cli_env(), "COLUMNS": "300"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == (
        f"error: {bad} line 2 is not valid JSON (Expecting property name enclosed in double "
        "quotes); one object a line"
    )
    cases = {
        "nope.jsonl: no such prompts file": [str(tmp_path / "nope.jsonl"), "a=http://h"],
        "is not NAME=URL": [str(good), "a:http://h"],
        "no prices for backend(s) ['a']": [str(good), "a=http://h", *prices],
        "1 prompt(s) need a judge": [str(good), "small=http://h", *prices],
        "--retries must be >= 0": [str(ref), "small=http://h", *prices, "--retries", "-1"],
    }
    (tmp_path / "wide.jsonl").write_text('{"query": "a", "quality": {"x": 1}}\n')
    wide = ["--out", str(tmp_path / "wide.jsonl")]
    cases["wide.jsonl line 1 is not a row `dynroute llm collect` writes"] = [
        str(ref),
        "small=http://h",
        *prices,
        *wide,
    ]
    for needle, (path, backend, *rest) in cases.items():
        args = ["llm", "collect", "--prompts", path, "--backend", backend, *out, *rest]
        result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
        assert result.exit_code == 2 and needle in result.output, (needle, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
