"""PHATGOOSE gates train only their own parameters; `dynroute lora library build|eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dynroute.checkpoints import load_model
from dynroute.cli import app
from dynroute.data.tokenizer import train_tokenizer
from dynroute.lora import add_lora_experts, save_lora_experts
from dynroute.lora.library import (
    LIBRARY_ROUTERS,
    library_layers,
    load_adapter_library,
    train_phatgoose_gates,
)
from dynroute.lora.library.gates import gate_loss
from dynroute.lora.train import load_lora_config
from lora_models import randomize_adapters, tiny_dynmoe

runner = CliRunner()
TEXTS = {
    "code": "def f(x):\n    return x * 2\n\nclass A:\n    pass\n",
    "maths": "1 + 2 = 3; 4 * 5 = 20; 7 - 3 = 4; 9 / 3 = 3; 2 ** 8 = 256.\n",
    "prose": "The quick brown fox jumps over the lazy dog. It was a sunny day.\n",
}
CONFIG = """
[lora]
targets = ["qkv", "proj"]
num_experts = 2
rank = 2
router = "top_k:k=2"

[data]
source = "{data}"
max_train_bytes = 6000
max_val_bytes = 1500

[train]
steps = 3
batch_size = 4
seq_len = 16
lr = 1e-2
warmup_steps = 1
log_interval = 1
checkpoint_interval = 3
eval_batches = 1
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny base with a tokenizer, and a TOML config over three small domains."""
    root = tmp_path_factory.mktemp("library")
    for name, text in TEXTS.items():
        (root / "domains" / name).mkdir(parents=True)
        for i in range(6):
            (root / "domains" / name / f"{i}.txt").write_text(f"{i} " + text * 40)
    base = root / "base"
    model = tiny_dynmoe()
    tok = train_tokenizer(list(TEXTS.values()) * 20, vocab_size=300)
    model.resize_token_embeddings(tok.get_vocab_size(), mean_resizing=False)
    model.save_pretrained(base)
    tok.save(str(base / "tokenizer.json"))
    config = root / "library.toml"
    config.write_text(CONFIG.format(data=root / "domains"))
    return base, config


def _adapter(base: Path, folder: Path, seed: int) -> Path:
    model = add_lora_experts(load_model(base).model, ["qkv", "proj"], num_experts=1, rank=2,
                             router="top_k:k=1")  # fmt: skip
    randomize_adapters(model, seed)
    return save_lora_experts(model, folder)


def test_gate_training_changes_only_the_gate(setup, tmp_path: Path) -> None:
    base, config = setup
    folder = _adapter(base, tmp_path / "code" / "adapters", seed=1)
    model = load_adapter_library(load_model(base).model, [folder], router="uniform")
    for layer in library_layers(model).values():
        layer.start_gate_training(0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".training_gate") for n in trainable)
    x = torch.randint(0, 300, (2, 8))
    gate_loss(model, x, x).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == set(trainable)

    # the real run (the training engine): the adapter's tensors stay bit for bit
    before = load_file(str(folder / "lora_experts.safetensors"))
    cfg = load_lora_config(config)
    cfg.data.domains = ["code"]
    result = train_phatgoose_gates(cfg, base, folder, tmp_path / "gate", progress=False)
    after = load_file(str(folder / "lora_experts.safetensors"))
    assert result["steps"] == 3 and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    gates = load_file(result["gates"])
    assert sorted(gates) == sorted(library_layers(model)) and len(gates) == 4
    assert all(g.abs().max() > 0 for g in gates.values())  # trained away from zero
    routed = load_adapter_library(load_model(base).model, [folder, _adapter(
        base, tmp_path / "maths" / "adapters", seed=2)], router="arrow", top_k=1)  # fmt: skip
    with pytest.raises(ValueError, match=r"adapter\(s\) \['maths'\] have no gate"):
        load_adapter_library(load_model(base).model, [folder, tmp_path / "maths"],
                             router="phatgoose")  # fmt: skip
    assert routed.adapter_library_config["names"] == ["code", "maths"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynroute.cli", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_cli_bad_input_is_one_line(setup, tmp_path: Path) -> None:
    base, config = setup
    missing = _cli("lora", "library", "eval", str(tmp_path / "nope"), "--no-progress")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert missing.stderr.startswith("error: ") and str(tmp_path / "nope") in missing.stderr
    assert "lora library build" in missing.stderr
    held = runner.invoke(app, ["lora", "library", "build", str(base), "--config", str(config),
                               "--out", str(tmp_path / "lib"), "--held-out", "poetry",
                               "--no-progress"])  # fmt: skip
    line = " ".join(held.stderr.split())
    assert held.exit_code == 2 and line.startswith("error: --held-out poetry"), held.output
    assert "['code', 'maths', 'prose']" in line and "Traceback" not in held.output


@pytest.mark.slow
def test_build_then_eval_every_router(setup, tmp_path: Path) -> None:
    base, config = setup
    lib = tmp_path / "lib"
    built = runner.invoke(app, ["lora", "library", "build", str(base), "--config", str(config),
                                "--out", str(lib), "--held-out", "prose", "--gate-steps", "2",
                                "--no-progress", "--json"])  # fmt: skip
    assert built.exit_code == 0, built.output
    info = json.loads(built.stdout)
    assert info["held_in"] == ["code", "maths"] and info["held_out"] == ["prose"]
    result = runner.invoke(app, ["lora", "library", "eval", str(lib), "--no-progress"],
                           terminal_width=250)  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluated = json.loads((lib / "eval.json").read_text())
    names = {row["router"].split("(")[0] for row in evaluated["rows"]}
    LIBRARY_ROUTERS.discover()
    assert set(LIBRARY_ROUTERS) <= names and "base model" in names
    rows = {row["router"]: row for row in evaluated["rows"]}
    assert rows["oracle"]["domains"].keys() == {"code", "maths"}  # no oracle on held-out
    assert rows["arrow(top_k=2)"]["adapters_per_token"] == 2.0
    assert (lib / "eval.png").is_file() and (lib / "eval.html").is_file()
    assert "dynamic_k" in result.output and "held-out mean" in result.output
