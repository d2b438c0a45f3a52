"""End to end: `dynroute train` on a tiny config, rerun (resume), `dynroute eval --json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynroute.cli import app
from tiny_runs import CLI_TRAIN, STDLIB, tiny_run

SOURCES = ("textwrap.py", "shlex.py", "glob.py")


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_threads: None) -> Path:
    monkeypatch.setenv("DYNROUTE_CACHE", str(tmp_path / "cache"))
    return tiny_run(tmp_path, SOURCES, train=CLI_TRAIN)


def test_train_resume_eval(config: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--out", str(out), "--router", "top_p:p=0.3"]
    args += ["--steps", "8", "--seed", "1", "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "val loss" in first.output
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["router"] == {"name": "top_p", "p": 0.3}
    assert (run["train"]["steps"], run["train"]["seed"]) == (8, 1)
    assert (out / "model" / "model.safetensors").is_file()

    rerun = runner.invoke(app, args)  # same command: resumes a finished run, no new steps
    assert rerun.exit_code == 0 and rerun.output.startswith("resuming from step 8")

    clash = runner.invoke(app, [*args[:6], "top_p:p=0.5", *args[7:]])
    assert clash.exit_code == 2 and "different configuration" in clash.output

    result = runner.invoke(app, ["eval", str(out), "--json", "--max-batches", "2"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    for key in ("val_loss", "perplexity", "mean_experts_per_token", "tokens_per_second"):
        assert isinstance(metrics[key], float)
    assert len(metrics["experts_per_layer"]) == 2
    assert 1.0 <= metrics["mean_experts_per_token"] <= 4.0
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["val_loss"])
    assert metrics["router"] == "top_p(p=0.3)"

    table = runner.invoke(app, ["eval", str(out / "model"), "--max-batches", "1"])
    assert table.exit_code == 0 and "perplexity" in table.output

    # --data OTHER is encoded with the run's tokenizer: no second tokenizer is trained
    other = tmp_path / "other.txt"
    other.write_text((STDLIB / "fnmatch.py").read_text() * 4)
    tokenizers_before = sorted((tmp_path / "cache").rglob("tokenizer-*"))
    assert tokenizers_before, "the run's tokenizer is cached"
    elsewhere = runner.invoke(
        app, ["eval", str(out), "--json", "--max-batches", "1", "--data", str(other)]
    )
    assert elsewhere.exit_code == 0, elsewhere.output
    assert sorted((tmp_path / "cache").rglob("tokenizer-*")) == tokenizers_before
    assert json.loads(elsewhere.stdout)["val_loss"] != metrics["val_loss"]


def test_eval_of_a_non_checkpoint_says_what_to_pass(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2
    assert "--out folder" in result.output


def test_train_with_missing_config_fails_cleanly(tmp_path: Path) -> None:
    args = ["train", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "not found" in result.output


def test_train_with_an_expert_kind(config: Path, tmp_path: Path) -> None:
    """`--experts name:key=value` lands in the run's [model] experts (expert-kind registry
    and `apply_overrides(cfg, experts=...)`); an unknown kind is one line, exit 2."""
    from dynroute.common.registry import spec_name

    out = tmp_path / "mlp"
    args = ["train", "--config", str(config), "--out", str(out), "--steps", "2", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--experts", "mlp"])
    assert result.exit_code == 0, result.output
    assert spec_name(json.loads((out / "run.json").read_text())["model"]["experts"]) == "mlp"
    elsewhere = [*args[:4], str(tmp_path / "bad"), *args[5:]]
    bad = CliRunner().invoke(app, [*elsewhere, "--experts", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output and "Traceback" not in bad.output
