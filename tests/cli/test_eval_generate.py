"""`dynroute eval --generate`: generation tokens/s with and without the KV cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dynroute.cli import app
from dynroute.models import DynMoEConfig, DynMoEForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model with a tokenizer.json beside it (no training needed to time it)."""
    from dynroute.data.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("gen") / "model"
    text = ["def f(x):\n    return x + 1\n", "for i in range(10):\n    print(i)\n"] * 50
    tok = train_tokenizer(text, vocab_size=300)
    torch.manual_seed(0)
    cfg = DynMoEConfig(vocab_size=tok.get_vocab_size(), d_model=32, n_layers=2, n_heads=2,
                       d_ff=32, num_experts=4, router="top_p", p=0.4, max_seq_len=64)  # fmt: skip
    DynMoEForCausalLM(cfg).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_eval_generate_reports_cache_and_no_cache_side_by_side(model_dir: Path) -> None:
    small = model_dir.parent / "small.txt"  # a small corpus keeps the evaluation part short
    small.write_text("def g(y):\n    return y * 2\n" * 40)
    args = ["eval", str(model_dir), "--json", "--max-batches", "1", "--generate"]
    args += ["--data", str(small), "--seq-len", "16"]
    result = CliRunner().invoke(app, [*args, "--new-tokens", "12", "--prompt", "def f(x):"])
    assert result.exit_code == 0, result.output
    gen = json.loads(result.stdout)["generation"]
    assert gen["new_tokens"] == 12 and gen["prompt"].startswith("def")
    assert gen["same_tokens"] is True
    for mode in ("cache", "no_cache"):
        assert gen[mode]["tokens_per_second"] == pytest.approx(12 / gen[mode]["seconds"])
    assert gen["speedup"] == pytest.approx(gen["no_cache"]["seconds"] / gen["cache"]["seconds"])

    table = CliRunner().invoke(app, [*args[:2], *args[3:], "--new-tokens", "4"])
    assert table.exit_code == 0, table.output
    assert "tokens / s, KV cache" in table.output and "tokens / s, no cache" in table.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--new-tokens", "0"], "--new-tokens"), (["--prompt", ""], "--prompt")],
)
def test_eval_generate_bad_input_fails_cleanly(
    model_dir: Path, extra: list[str], message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dynroute.cli", "eval", str(model_dir), "--max-batches", "1",
         "--generate", *extra],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert message in proc.stderr + proc.stdout
