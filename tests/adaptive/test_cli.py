"""`dynroute adaptive train` end to end: tiny run, resume, eval; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynroute.cli import app


def test_train_resume_router_eval(config: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "random"
    args = ["adaptive", "train", "--config", str(config), "--out", str(out), "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "val loss" in first.output and (out / "model" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert 0.0 < train_rows[-1]["big_share"] < 1.0  # random routing mixes both modules

    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0 and "resumed from step 8" in rerun.output

    clash = runner.invoke(app, [*args, "--routing", "small"])
    assert clash.exit_code == 2 and "different configuration" in clash.output

    router = tmp_path / "router"
    args = ["adaptive", "train", "--config", str(config), "--out", str(router), "--no-progress"]
    args += ["--routing", "router", "--init-from", str(out), "--routers-only", "--steps", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (router / "metrics.jsonl").read_text().splitlines()]
    assert "p_big" in [r for r in rows if r["kind"] == "train"][-1]

    evaluated = runner.invoke(app, ["eval", str(router), "--json", "--max-batches", "2"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    assert metrics["router"].startswith("adaptive(routing=router")

    oracle = ["adaptive", "oracle", str(router), "--big-layers", "0", "1", "2", "--json"]
    result = runner.invoke(app, [*oracle, "--windows", "4", "--random", "5"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["budget"] for r in rows] == [0, 1, 2]
    keys = {"budget", "oracle_loss", "random_mean_loss", "random_best_loss", "router_loss"}
    assert all(keys <= set(r) for r in rows)
    assert sum(r["router_loss"] is not None for r in rows) == 1
    assert all(r["oracle_loss"] <= r["random_best_loss"] + 1e-6 for r in rows)
    plain = runner.invoke(app, [*oracle[:3], "--windows", "2", "--random", "3", "--skip"])
    assert plain.exit_code == 0 and "exhaustive" in plain.output

    bad = runner.invoke(app, [*oracle[:3], "--big-layers", "0", "7"])
    assert bad.exit_code == 2 and "out of range" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, [*oracle[:3], "--big-layers", "x"])
    assert bad.exit_code == 2 and "integers" in bad.output


def test_resume_after_stop_matches_uninterrupted(config: Path, tmp_path: Path) -> None:
    from dynroute.adaptive.training import load_adaptive_config, train_adaptive
    from dynroute.train import read_metrics

    cfg = load_adaptive_config(config)
    train_adaptive(cfg, tmp_path / "whole", progress=False)
    train_adaptive(cfg, tmp_path / "split", progress=False, stop_after=4)
    train_adaptive(cfg, tmp_path / "split", progress=False)

    def losses(run: str) -> list[float]:
        rows = read_metrics(tmp_path / run / "metrics.jsonl")
        return [r["loss"] for r in rows if r["kind"] == "train"]

    assert losses("whole") == losses("split")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[model]\nrouting = 'oracle'\n", "routing must be one of"),
        ("[model]\nwidth = 3\n", "unknown key(s) ['width']"),
        ("[model\n", "invalid TOML"),
    ],
)
def test_bad_input_exits_2_naming_the_file(tmp_path: Path, body: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(body)
    args = ["adaptive", "train", "--config", str(bad), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert "bad.toml" in result.output
    assert not (tmp_path / "o").exists()


def test_missing_config_and_run(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    args = ["adaptive", "train", "--config", str(missing), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "nope.toml" in result.output
