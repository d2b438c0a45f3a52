"""`dynroute llm ...` in a subprocess: one happy path, and bad input without tracebacks."""

import json
import os
import subprocess
import sys

import pytest

from dynroute.common.registry import PLUGINS_ENV


def run(*args, cwd=None, plugins=None):
    env = {k: v for k, v in os.environ.items() if k != PLUGINS_ENV}
    if plugins is not None:  # a module in ``cwd``
        env[PLUGINS_ENV] = plugins
        env["PYTHONPATH"] = os.pathsep.join([str(cwd), *sys.path])
    return subprocess.run(
        [sys.executable, "-m", "dynroute.cli", "llm", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
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


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
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
    assert r.returncode == 0 and r.stderr == "", r.stderr  # --json: no progress bar
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
    assert "knn: AIQ" in r.stderr and "2/2" in r.stderr  # progress by default, per router
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("<tr>") >= 4 and "data:image/png;base64," in html  # the plot inside
    assert (tmp_path / "rep" / "figures" / "cost_quality.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "problem", ["missing", "nocost", "nan", "unknown_model", "router", "router_param"]
)
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
    elif problem == "router_param":
        args[-1] = "knn:kk=3"
    if problem != "missing":
        bad.write_text("\n".join(json.dumps(r) for r in rows))
    r = run(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # no progress bar above it
    if problem == "router":
        assert "unknown query router 'nope'" in r.stderr
    elif problem == "router_param":
        assert "knn: unknown argument(s) ['kk']; accepted: seed, k" in r.stderr
    else:
        assert bad.name in r.stderr


def test_eval_shows_progress_per_router(tables):
    # stderr is a pipe here, not a terminal: one line per router and the bar's last state.
    routers = ["--query-router", "knn", "--query-router", "best_single"]
    r = run("eval", "--train", tables / "train.jsonl", *routers, "--progress")
    assert r.returncode == 0, r.stderr
    assert "knn: AIQ" in r.stderr and "best_single: AIQ" in r.stderr
    assert "query routers" in r.stderr and "2/2" in r.stderr


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--strong-share", "1.5"], "--strong-share"),
        (["--strong-share", "-0.5"], "--strong-share"),
        (["--lambda", "-1"], "--lambda"),
        (["--budget-usd", "0"], "--budget-usd"),
        (["--lambda", "1", "--strong-share", "0.3"], "give one of"),
    ],
)
def test_fit_refuses_a_lambda_out_of_range(tables, tmp_path, flags, named):
    out = tmp_path / "m"
    r = run("fit", "--train", tables / "train.jsonl", *flags, "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and named in r.stderr
    assert not out.exists()  # refused before anything is written


def test_fit_says_when_a_share_cannot_be_reached(tables, tmp_path):
    # Two kinds of query, knn over all 30: every query goes to big (λ = 0), or half (the
    # "sum" queries, which small answers too, go to small), or none: never 90%.
    args = ["fit", "--train", tables / "train.jsonl", "--out", tmp_path / "m"]
    r = run(*args, "--strong-share", "0.9", "--json")
    assert r.returncode == 0, r.stderr
    warning = r.stderr.strip()
    assert len(warning.splitlines()) == 1 and "--strong-share 0.9 cannot be reached" in warning
    assert "of the training queries to big" in warning and "set --lambda" in warning
    cal = json.loads(r.stdout)["calibration"]
    assert cal["met"] is False and cal["model"] == "big"
    assert cal["reached"] < 0.9 < cal["above"] and "no share in between" in warning
    assert json.loads((tmp_path / "m" / "config.json").read_text())["calibration"] == cal
    r = run(*args, "--strong-share", "0.5")  # reachable: no warning, the share in the line
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "50.0% of the training queries to big" in r.stdout


PLUGIN = """
import dataclasses

import torch

from dynroute.llm import QueryRouter, register_query_router


@register_query_router("cli_words")
@dataclasses.dataclass(eq=False)
class Words(QueryRouter):
    \"\"\"Queries with 'sum' go to the first model, the rest to the second.\"\"\"

    uses_embedding = False
    word: str = "sum"

    def _fit(self, train, z):
        pass

    def _predict(self, queries, z):
        hit = torch.tensor([[float(self.word in q.split())] for q in queries])  # [Q, 1]
        return torch.cat([hit, 1 - hit], 1)
"""


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_a_plugin_router_through_fit_and_route(tables, tmp_path):
    (tmp_path / "my_routers.py").write_text(PLUGIN)
    train = tables / "train.jsonl"
    r = run(
        "fit",
        "--train",
        train,
        "--query-router",
        "cli_words:word=sum",
        "--out",
        "m",
        cwd=tmp_path,
        plugins="my_routers",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["router"] == {
        "name": "cli_words",
        "seed": 0,
        "word": "sum",
    }
    queries = ["add 7 and 8 sum", "capital of country 3 geography"]
    r = run("route", "m", *queries, cwd=tmp_path, plugins="my_routers")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["small", "big"]
    r = run("route", "m", *queries, cwd=tmp_path)  # the plugin not named: one clear line
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown query router 'cli_words'" in r.stderr and PLUGINS_ENV in r.stderr


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


def test_a_dropped_query_is_one_plain_warning_line(tables, tmp_path):
    rows = [json.loads(line) for line in (tables / "train.jsonl").read_text().splitlines()]
    rows.append({"query": "a new query", "model": "small", "quality": None, "cost": None,
                 "missing": "HTTP 503"})  # fmt: skip
    rows.append({"query": "a new query", "model": "big", "quality": 1.0, "cost": 0.01})
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    r = run("fit", "--train", tmp_path / "t.jsonl", "--out", tmp_path / "m", "--lambda", 1)
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and warned[0].startswith("warning: "), r.stderr
    assert ".py:" not in r.stderr  # no file:line, no source line
