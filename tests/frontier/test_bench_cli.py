"""`dynroute bench frontier` end to end in a subprocess; `dynroute bench --help` names the
layer suite's script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dynroute.cli import app

from .conftest import dynroute


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_bench_frontier_trains_judges_writes_and_reuses(tiny_config: Path, tmp_path: Path) -> None:
    out, results = tmp_path / "runs", tmp_path / "res" / "frontier.json"
    args = ["bench", "frontier", "--config", str(tiny_config), "--out", str(out)]
    args += ["--routers", "top_k:k=1,top_k:k=2", "--routers", "top_p:p=0.4"]
    args += ["--seeds", "2", "--steps", "2", "--results", str(results), "--no-progress"]
    first = dynroute(*args)
    assert first.returncode == 0, first.stderr
    payload = json.loads(results.read_text())
    runs = payload["runs"]
    assert sorted((r["name"], r["seed"]) for r in runs) == sorted(
        (n, s) for n in ("top_k-k1", "top_k-k2", "top_p-p0.4") for s in (0, 1)
    )
    assert all(r["train_tokens"] == 2 * 4 * 32 and not r["reused"] for r in runs)
    assert len({r["eval_tokens"] for r in runs}) == 1  # one evaluation set for all
    top1 = [r for r in runs if r["name"] == "top_k-k1"]
    assert all(r["mean_experts_per_token"] == 1.0 for r in top1)
    (judged,) = payload["judgements"]
    assert judged["label"] == "top_p(p=0.4)" and len(judged["margins"]) == 2
    assert judged["verdict"] in {"below", "above", "on", "outside"}
    assert payload["verdict"] in first.stdout.replace("\n", " ") or payload["verdict"][:40] in (
        first.stdout.replace("\n", "")
    )
    assert "| top_p(p=0.4) | 2 |" in payload["table"]
    # both views: each run's mean k̄ over its 2 training steps, judged again at that compute
    assert all(r["training_steps_counted"] == 2 for r in runs)
    assert all(r["training_mean_experts_per_token"] == 1.0 for r in top1)
    assert payload["training_judgements"][0]["label"] == "top_p(p=0.4)"
    assert "training-compute verdict" in payload["table"].splitlines()[0]
    assert "training_verdict" in payload
    assert results.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"

    again = dynroute(*args)
    assert again.returncode == 0, again.stderr
    assert "reused 6 finished run(s)" in again.stdout.replace("\n", " ")
    rerun = json.loads(results.read_text())
    assert [r["val_loss"] for r in rerun["runs"]] == [r["val_loss"] for r in runs]
    # a reused run reads its training compute back from its checkpoint
    key = "training_expert_flops"
    assert [r[key] for r in rerun["runs"]] == [r[key] for r in runs]
    assert all(r["reused"] for r in rerun["runs"])


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--routers", "top_q"], "top_q"),
        (["--routers", "top_k:k=2,top_p:p=0.4"], "at least two top_k"),
        (["--routers", "top_k:k=1,top_k:k=9"], "k must be between 1 and num_experts"),
        (["--routers", "top_k,top_k:k=2"], "listed twice: top_k-k2"),
        (["--routers", "top_k", "--targets", "1,x"], "--targets 1,x"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--steps", "-5"], "steps must be >= 1"),
        (["--config", "NOPE/missing.toml"], "NOPE/missing.toml"),
        (["--data", "NOPE/corpus"], "NOPE/corpus"),
    ],
)
def test_bench_frontier_bad_input_is_one_line(
    extra: list[str], needle: str, tiny_config: Path, tmp_path: Path
) -> None:
    args = ["bench", "frontier", "--config", str(tiny_config), "--out", str(tmp_path / "o")]
    routers = [] if "--routers" in extra else ["--routers", "top_k"]
    result = CliRunner().invoke(app, [*args, *routers, *extra])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()  # nothing written before the checks pass


def test_bench_frontier_bad_input_in_a_subprocess(tmp_path: Path) -> None:
    result = dynroute("bench", "frontier", "--config", str(tmp_path / "none.toml"))
    assert result.returncode == 2
    assert str(tmp_path / "none.toml") in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bench_help_points_at_the_layer_script() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "python benchmarks/layer.py" in " ".join(result.output.split())
    assert "layer" not in typer.main.get_command(app).commands["bench"].commands
