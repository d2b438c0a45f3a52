"""`dynroute posthoc` as a user runs it: a dense model or a target above k is refused in
one line that names the folder (exit 2, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from dynroute.data.tokenizer import train_tokenizer
from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from hf.tiny_models import COMMON, char_tokenizer


def refusal(*args: str | Path) -> str:
    """Run the command; return its one-line error (after checking it is one)."""
    env = {**os.environ, "COLUMNS": "400"}
    done = subprocess.run(
        [sys.executable, "-m", "dynroute.cli", "posthoc", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture
def dense_model(tmp_path: Path) -> Path:
    """A tiny dense transformers LM (Llama) with its tokenizer."""
    folder = tmp_path / "llama"
    cfg = transformers.LlamaConfig(**COMMON, intermediate_size=16)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def top2_model(tmp_path: Path) -> Path:
    """A tiny DynMoE top-2 model folder with its tokenizer."""
    folder = tmp_path / "top2"
    torch.manual_seed(0)
    cfg = DynMoEConfig(vocab_size=300, d_model=16, n_layers=1, n_heads=2, d_ff=16,
                       num_experts=4, router={"name": "top_k", "k": 2})  # fmt: skip
    DynMoEForCausalLM(cfg).save_pretrained(folder)
    train_tokenizer(["def f(x): return x"] * 20, vocab_size=270).save(
        str(folder / "tokenizer.json")
    )
    return folder


def test_a_dense_model_is_refused_in_one_line(dense_model: Path) -> None:
    line = refusal(dense_model, "--targets", "0.5")
    assert str(dense_model) in line, line


def test_a_target_above_k_is_refused_in_one_line(top2_model: Path) -> None:
    line = refusal(top2_model, "--targets", "1,1.5")
    assert str(top2_model) in line and "above the model's k" in line and "top-2" in line, line
