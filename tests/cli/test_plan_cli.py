"""`dynroute plan` and `dynroute profile` as a user runs them (a subprocess each)."""

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
    result = run("plan", *MODEL, "--nodes", "1", "--gpus-per-node", "8", "--memory-gb", "4",
                 "--search", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["searched"] and out["memory_gb"] <= 4
    table = run("plan", "--paper")
    assert table.returncode == 0, table.stderr
    assert "gpt2-a" in table.stdout and "DeepSpeed-MoE" in table.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--layers", "0", "--d-model", "8", "--num-experts", "4"], "--layers"),
        (["--d-model", "8", "--num-experts", "4"], "pass --layers"),
        ([*MODEL, "--profile", "nope.json"], "nope.json: no such profile file"),
        ([*MODEL, "--profile", "nope.json", "--tflops", "3"], "drop --tflops"),
        ([*MODEL, "--search", "--chunks", "4"], "--search chooses"),
        ([*MODEL, "--ep", "3"], "--ep 3"),
        ([*MODEL, "--experts-per-token", "a,b"], "--experts-per-token"),
    ],
)
def test_plan_bad_input_is_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    result = run("plan", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def test_profile_bad_input_is_one_line(tmp_path: Path) -> None:
    for args, needle in ((["--procs", "1"], "--procs"), (["--sizes", "x"], "--sizes"),
                         (["--procs", "4", "--nnodes", "3"], "--nnodes 3")):  # fmt: skip
        result = run("profile", *args, "--out", str(tmp_path / "p.json"))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], lines


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
    plan = run("plan", "--layers", "2", "--d-model", "64", "--num-experts", "4", "--seq", "64",
               "--batch", "2", "--profile", str(out), "--ep", "2", "--chunks", "2",
               "--element-bytes", "4", "--json")  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    predicted = json.loads(plan.stdout)
    assert predicted["step_time_s"] > 0 and predicted["cluster"].startswith("profile of ")
