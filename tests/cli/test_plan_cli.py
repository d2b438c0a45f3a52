"""`dynroute plan` and `dynroute profile` as a user runs them (subprocesses; the bad-input
cases in-process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MODEL = ["--layers", "4", "--d-model", "512", "--num-experts", "16", "--k", "2"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "dynroute.cli", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_plan_json_prints_the_layout_and_the_prediction() -> None:
    result = run("plan", *MODEL, "--nodes", "2", "--gpus-per-node", "8", "--ep", "16",
                 "--chunks", "4", "--hierarchical", "--partitioned", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"layout", "step_time_s", "tokens_per_s", "memory_gb", "breakdown"} <= set(out)
    assert out["layout"] == {"ep": 16, "dp": 1, "chunks": 4, "hierarchical": True,
                             "partitioned": True}  # fmt: skip
    assert out["tokens_per_s"] == pytest.approx(16 * 1024 * 8 / out["step_time_s"])
    for task in ("gate", "order", "dispatch", "experts", "combine", "inverse_order"):
        assert out["breakdown"][f"{task}_s"] > 0, task


def test_plan_search_and_the_paper_table() -> None:
    from typer.testing import CliRunner

    from dynroute.cli import app

    result = CliRunner().invoke(app, ["plan", *MODEL, "--nodes", "1", "--gpus-per-node", "8",
                                      "--memory-gb", "4", "--search", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["searched"] and out["memory_gb"] <= 4
    table = CliRunner().invoke(app, ["plan", "--paper"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.stderr
    assert "gpt2-a" in table.stdout and "DeepSpeed-MoE" in table.stdout


BAD = {
    "plan layers 0": (["plan", "--layers", "0", "--d-model", "8", "--num-experts", "4"],
                      "--layers"),
    "plan no layers": (["plan", "--d-model", "8", "--num-experts", "4"], "pass --layers"),
    "plan no profile": (["plan", *MODEL, "--profile", "nope.json"],
                        "nope.json: no such profile file"),
    "plan profile and hand": (["plan", *MODEL, "--profile", "nope.json", "--tflops", "3"],
                              "drop --tflops"),
    "plan search and chunks": (["plan", *MODEL, "--search", "--chunks", "4"], "--search chooses"),
    "plan ep 3": (["plan", *MODEL, "--ep", "3"], "--ep 3"),
    "plan per token": (["plan", *MODEL, "--experts-per-token", "a,b"], "--experts-per-token"),
    "profile procs 1": (["profile", "--procs", "1"], "--procs"),
    "profile sizes": (["profile", "--sizes", "x"], "--sizes"),
    "profile nnodes": (["profile", "--procs", "4", "--nnodes", "3"], "--nnodes 3"),
    "profile rows": (["profile", "--rows", "0"], "--rows"),
}  # fmt: skip


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str]]:
    """Every bad case in this process (typer's runner: no torch import per case);
    ``test_plan_json_...`` and tests/cli/test_errors.py run the command as a subprocess."""
    from typer.testing import CliRunner

    from dynroute.cli import app

    tmp = tmp_path_factory.mktemp("bad")
    done = {}
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        for name, (args, _) in BAD.items():
            out = ["--out", str(tmp / "p.json")] if args[0] == "profile" else []
            result = CliRunner().invoke(app, [*args, *out], env={"COLUMNS": "200"})
            done[name] = (result.exit_code, result.stdout, result.stderr)
    finally:
        os.chdir(cwd)
    return done


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line(bad_runs: dict[str, tuple[int, str, str]], name: str) -> None:
    code, out, err = bad_runs[name]
    assert code == 2, err
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and BAD[name][1] in lines[0], lines


@pytest.mark.slow
def test_profile_two_processes_then_plan_with_it(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    result = run("profile", "--procs", "2", "--out", str(out), "--sizes", "4096,65536",
                 "--repeats", "2", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    names = {name for name, _, _ in summary["fits"]}
    assert {"all_to_all (flat)", "all_reduce (flat)", "all_gather (flat)", "gemm"} <= names
    assert {"gemm backward", "dense", "dense backward"} <= names
    plan = run("plan", "--layers", "2", "--d-model", "64", "--num-experts", "4", "--seq", "64",
               "--batch", "2", "--profile", str(out), "--ep", "2", "--chunks", "2",
               "--element-bytes", "4", "--json")  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    predicted = json.loads(plan.stdout)
    assert predicted["step_time_s"] > 0 and predicted["cluster"].startswith("profile of ")
