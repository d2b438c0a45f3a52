"""`dynroute eval --expert-memory`: the same val_loss plus an `offload` object; bad budgets
fail in one line that names the flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynroute.models import DynMoEConfig, DynMoEForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TEXT = ["def f(x):\n    return x + 1\n", "for i in range(10):\n    print(i)\n"] * 50


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny top-p model with a tokenizer.json and a corpus beside it."""
    from dynroute.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("offload")
    folder = root / "model"
    tok = train_tokenizer(TEXT, vocab_size=300)
    torch.manual_seed(0)
    cfg = DynMoEConfig(vocab_size=tok.get_vocab_size(), d_model=32, n_layers=2, n_heads=2,
                       d_ff=32, num_experts=8, router="top_p", p=0.4, max_seq_len=64)  # fmt: skip
    DynMoEForCausalLM(cfg).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    (root / "corpus.txt").write_text("".join(TEXT))
    return folder


def dynroute_here(*args: str) -> tuple[int, str]:
    """The CLI in this process (exit code, stdout and stderr)."""
    from typer.testing import CliRunner

    from dynroute.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def dynroute(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynroute.cli", *args],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=300,
    )  # fmt: skip


def test_eval_with_expert_memory_gives_the_same_loss_and_an_offload_object(model_dir: Path) -> None:
    common = ["eval", str(model_dir), "--data", str(model_dir.parent / "corpus.txt"),
              "--seq-len", "32", "--batch-size", "2", "--max-batches", "2", "--json"]  # fmt: skip
    (code, plain), (code_off, offloaded) = (
        dynroute_here(*common),
        dynroute_here(*common, "--expert-memory", "50%"),
    )
    assert code == 0 and code_off == 0, offloaded
    want, got = json.loads(plain), json.loads(offloaded)
    assert got["val_loss"] == want["val_loss"]
    # every other number too (parameter counts included: the offloaded experts keep shapes)
    assert {k: v for k, v in got.items() if k not in ("tokens_per_second", "offload")} == {
        k: v for k, v in want.items() if k != "tokens_per_second"
    }
    off = got["offload"]
    assert off["slots"] == 8 and off["total_experts"] == 16
    assert 0 <= off["hit_rate"] <= 1 and off["bytes_per_token"] > 0


def test_eval_bad_budget_fails_in_one_line_in_a_subprocess(model_dir: Path) -> None:
    proc = dynroute("eval", str(model_dir), "--max-batches", "1", "--expert-memory", "0")
    out = proc.stderr + proc.stdout
    assert proc.returncode == 2
    assert "Traceback" not in out
    assert "--expert-memory '0': must be more than 0" in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1


@pytest.mark.parametrize(
    ("budget", "words"),
    [("5TB", "larger than the model"), ("plenty", "not a size"), ("101%", "more than 100%")],
)
def test_eval_bad_budgets_name_the_flag(model_dir: Path, budget: str, words: str) -> None:
    code, out = dynroute_here(
        "eval", str(model_dir), "--max-batches", "1", "--expert-memory", budget
    )
    assert code == 2
    assert "--expert-memory" in out and words in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1


def test_serve_bad_budget_fails_in_one_line(model_dir: Path) -> None:
    from dynroute.common.net import free_port

    port = str(free_port())
    code, out = dynroute_here("serve", str(model_dir), "--port", port, "--expert-memory", "2XB")
    assert code == 2
    assert "--expert-memory '2XB': not a size" in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1
