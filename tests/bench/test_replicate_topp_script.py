"""benchmarks/replicate_topp.py runs end to end on the frontier engine (tiny model, 2 steps)."""

from __future__ import annotations

import doctest
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_runs import FRONTIER_MODEL, FRONTIER_TRAIN, cli_env, tiny_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "replicate_topp.py"
#: a frontier run's config, its evaluation left to the script (--final-eval-batches)
TRAIN = {**FRONTIER_TRAIN, "eval_interval": None, "eval_batches": None}


def _run(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tiny_run(tmp_path, model=FRONTIER_MODEL, train=TRAIN)
    env = cli_env(cache=tmp_path / "cache")
    cmd = [sys.executable, str(SCRIPT), "--config", str(config), "--seeds", "1"]
    cmd += ["--ps", "0.4", "--final-eval-batches", "2", "--no-progress"]
    cmd += ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r.json")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_replicate_topp_trains_compares_and_reuses(tmp_path: Path) -> None:
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    payload = json.loads((tmp_path / "r.json").read_text())
    assert set(payload) >= {"meta", "rows", "runs", "markdown", "config", "command"}
    assert list(payload["runs"]) == ["top1-s0", "top2-s0", "top_p0.4-s0"]
    for run in payload["runs"].values():
        assert {"val_loss", "mean_experts_per_token", "activated_param_ratio"} <= set(run)
        assert run["train_tokens"] == 2 * 4 * 32 and not run["reused"]
    top1, top2, top_p = payload["rows"]
    assert top2["activated_param_ratio_mean"] == 1.0 and top2["delta_vs_top2_mean"] == 0.0
    assert top1["expert_param_ratio_mean"] == 0.5 and top1["verdict"] == "reference"
    assert top_p["router"] == "top_p(p=0.4)" and top_p["frontier_verdict"] is not None
    assert payload["meta"]["eval_tokens"] == 2 * 4 * 32  # --final-eval-batches 2
    assert "| top_p(p=0.4) |" in payload["markdown"] and "| top_p(p=0.4) |" in first.stdout

    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = json.loads((tmp_path / "r.json").read_text())
    assert all(r["reused"] for r in rerun["runs"].values())
    loss = [r["val_loss_mean"] for r in payload["rows"]]
    assert [r["val_loss_mean"] for r in rerun["rows"]] == loss


def test_replicate_topp_examples() -> None:
    spec = importlib.util.spec_from_file_location("replicate_topp", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
