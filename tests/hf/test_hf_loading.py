"""`dynroute eval` and `dynroute analyze` load a transformers MoE through the one loader."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dynroute.checkpoints import load_model
from dynroute.cli import app
from dynroute.hf import evaluate_text


def test_eval_and_analyze_of_an_hf_checkpoint(tiny_dir, text_file, tmp_path):
    loaded = load_model(tiny_dir)
    assert loaded.kind == "hf-moe" and loaded.folder == tiny_dir and loaded.prepared is None

    args = ["eval", str(tiny_dir), "--json", "--data", str(text_file), "--seq-len", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    direct = evaluate_text(tiny_dir, text_file, seq_len=64, progress=False)
    assert cli["checkpoint"] == str(tiny_dir) and cli["eval_tokens"] == direct["eval_tokens"]
    assert cli["val_loss"] == direct["val_loss"]

    out = tmp_path / "analysis"
    args = ["analyze", str(tiny_dir), "--data", str(text_file), "--split", "train"]
    result = CliRunner().invoke(
        app, [*args, "--seq-len", "32", "--max-tokens", "256", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "stats.json").read_text())["meta"]
    assert meta["num_tokens"] == 256 and meta["kind"] == "hf-moe"
