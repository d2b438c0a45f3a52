"""`dynroute llm ...` in a subprocess: one happy path, and bad input without tracebacks."""

import json
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dynroute.cli", "llm", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    rows = []
    for i in range(40):
        math_q = i % 2 == 0
        q = f"add {i} and {i + 1} sum" if math_q else f"capital of country {i} geography"
        rows += [
            {"query": q, "model": "small", "quality": float(math_q), "cost": 0.001},
            {"query": q, "model": "big", "quality": 1.0, "cost": 0.01},
        ]
    (d / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:60]))
    (d / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[60:]))
    return d


def test_eval_fit_route_report(tables, tmp_path):
    r = run(
        "eval",
        "--train",
        tables / "train.jsonl",
        "--test",
        tables / "test.jsonl",
        "--query-router",
        "knn",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["router"] == "knn" and 0 < out["aiq"] <= 1
    assert {"lambda", "cost", "quality"} == set(out["points"][0])
    assert {"zero_router", "oracle", "single_models"} <= set(out["baselines"])
    assert out["apgr"] is not None  # two models: RouteLLM's metrics too
    r = run(
        "fit",
        "--train",
        tables / "train.jsonl",
        "--query-router",
        "knn:k=3",
        "--out",
        tmp_path / "m",
        "--lambda",
        50,
    )
    assert r.returncode == 0, r.stderr
    r = run("route", tmp_path / "m", "add 7 and 8 sum", "capital of country 3 geography")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["small", "big"]
    r = run(
        "report",
        "--train",
        tables / "train.jsonl",
        "--query-router",
        "knn",
        "--query-router",
        "best_single",
        "--out",
        tmp_path / "rep",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "report.html").read_text().count("<tr>") >= 4
    assert (tmp_path / "rep" / "cost_quality.png").stat().st_size > 1000


@pytest.mark.parametrize("problem", ["missing", "nocost", "nan", "unknown_model", "router"])
def test_bad_input_is_one_line_exit_2(tables, tmp_path, problem):
    rows = [json.loads(x) for x in (tables / "test.jsonl").read_text().splitlines()]
    bad = tmp_path / f"{problem}.jsonl"
    args = ["eval", "--train", tables / "train.jsonl", "--test", bad, "--query-router", "knn"]
    if problem == "nocost":
        rows = [{k: v for k, v in r.items() if k != "cost"} for r in rows]
    elif problem == "nan":
        rows[0]["quality"] = float("nan")
    elif problem == "unknown_model":
        rows = [dict(r, model="gpt-9" if r["model"] == "big" else r["model"]) for r in rows]
    elif problem == "router":
        args[-1] = "nope"
    if problem != "missing":
        bad.write_text("\n".join(json.dumps(r) for r in rows))
    r = run(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3
    if problem != "router":
        assert bad.name in r.stderr
    else:
        assert "unknown router" in r.stderr


def test_route_without_a_fitted_router(tmp_path):
    r = run("route", tmp_path, "hello")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "config.json" in r.stderr and "dynroute llm fit" in r.stderr


def test_docs_python_block_runs(capsys):
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "llm-routing.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, str(doc), "exec"), {})
    assert capsys.readouterr().out
