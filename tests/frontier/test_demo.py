"""`dynroute demo`: arguments checked up front, the default routers exist, runs reused."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynroute.cli import app
from dynroute.frontier.demo import demo_routers
from dynroute.routing import make_router
from strict_json import load_strict

from .conftest import dynroute


def test_demo_with_a_bad_p_fails_at_once_in_a_subprocess(tmp_path: Path) -> None:
    started = time.perf_counter()
    result = dynroute("demo", "--p", "1.5", "--out", str(tmp_path / "demo"))
    assert time.perf_counter() - started < 5.0
    assert result.returncode == 2
    assert "--p must be in (0, 1]" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data", "NOPE/texts"], "NOPE/texts"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--steps", "-5"], "--steps must be >= 1"),
        (["--threads", "-3"], "--threads must be >= 0"),
        (["--routers", "top_q:k=2"], "unknown router 'top_q'"),
        (["--routers", "top_p:p=0.4"], "at least two top_k"),
        (["--config", "NOPE/demo.toml"], "NOPE/demo.toml"),
        (["--p", "0.3"], "with --routers write top_p:p="),
    ],
)
def test_demo_bad_arguments_fail_before_anything_is_written(
    args: list[str], needle: str, tiny_config: Path, tmp_path: Path
) -> None:
    config = [] if "--config" in args else ["--config", str(tiny_config)]
    routers = [] if "--routers" in args else ["--routers", "top_k:k=1,top_k:k=2"]
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *config, *routers, *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("spec", demo_routers())
def test_every_default_demo_router_is_registered(spec: str) -> None:
    # Fails (never skips) while a listed router is missing: the demo would refuse to start.
    make_router(spec)


def test_demo_reuses_finished_runs_and_uses_one_evaluation_set(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # output to a pipe: rich's console is 80 wide
    out = tmp_path / "demo"
    args = ["demo", "--config", str(tiny_config), "--out", str(out), "--no-progress"]
    args += ["--routers", "top_k:k=1,normalize=false,top_k:k=2,top_p:p=0.4"]
    first = CliRunner().invoke(app, args, terminal_width=200)
    assert first.exit_code == 0, first.output
    assert "Reused" not in first.output
    # the table's rows keep router names whole (not folded mid-word at 80 columns)
    assert re.search(r"^ *top_k\(k=1, normalize=False\) +│", first.output, re.M), first.output
    payload = load_strict(out / "results.json")  # one seed: no spread, null (not NaN)
    assert payload["judgements"][0]["margin_se"] is None
    runs = {f"{r['name']}-s{r['seed']}": r for r in payload["runs"]}
    assert set(runs) == {"top_k-k1-normalizeFalse-s0", "top_k-k2-s0", "top_p-p0.4-s0"}
    report = (out / "report.md").read_text()
    assert payload["verdict"] in report and "(frontier.png)" in report
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    # table, plot and analysis report the same loss on the same tokens
    eval_tokens = {r["eval_tokens"] for r in runs.values()}
    assert len(eval_tokens) == 1 and f"{eval_tokens.pop():,} held-out tokens" in report
    stats = json.loads((out / "analysis" / "top2" / "stats.json").read_text())
    assert stats["mean_loss"] == pytest.approx(runs["top_k-k2-s0"]["val_loss"], abs=1e-4)
    assert "(analysis/report.html)" in report
    assert "**Counting training compute.**" in report and payload["training_verdict"] in report
    assert "training verdict" in first.output

    again = CliRunner().invoke(app, [*args, "--no-analysis"], terminal_width=200)
    assert again.exit_code == 0, again.output
    assert "Reused 3 finished run(s)" in again.output
    assert "top_p-p0.4-s0" in again.output
    rerun = {
        f"{r['name']}-s{r['seed']}": r
        for r in json.loads((out / "results.json").read_text())["runs"]
    }
    assert {n: r["val_loss"] for n, r in rerun.items()} == {
        n: r["val_loss"] for n, r in runs.items()
    }
