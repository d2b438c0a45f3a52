"""`dynroute lora train`: a tiny run, resume by rerunning, one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dynroute.cli import app
from dynroute.data.tokenizer import train_tokenizer
from dynroute.lora import load_lora_experts, lora_layers
from dynroute.lora.data import load_domains, lora_domains
from dynroute.lora.train import load_lora_config, train_lora
from dynroute.train import TrainingInterrupted, apply_overrides, read_metrics, stop_on_sigint
from lora_models import tiny_dynmoe

runner = CliRunner()

CONFIG = """
[lora]
targets = ["qkv", "proj"]
num_experts = 3
rank = 2
router = "{router}"

[data]
source = "{data}"
max_train_bytes = 6000
max_val_bytes = 1500

[train]
steps = 4
batch_size = 4
seq_len = 16
lr = 1e-2
warmup_steps = 1
log_interval = 2
checkpoint_interval = 2
eval_batches = 2
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora_cli")
    data = root / "domains"
    texts = {
        "code": "def f(x):\n    return x * 2\n\nclass A:\n    pass\n",
        "prose": "The quick brown fox jumps over the lazy dog. It was a sunny day.\n",
    }
    for name, text in texts.items():
        for i in range(6):
            (data / name).mkdir(parents=True, exist_ok=True)
            (data / name / f"{i}.txt").write_text(f"{i} " + text * 40)
    base = root / "base"
    model = tiny_dynmoe()
    tok = train_tokenizer(list(texts.values()) * 20, vocab_size=300)
    model.resize_token_embeddings(tok.get_vocab_size(), mean_resizing=False)
    model.save_pretrained(base)
    tok.save(str(base / "tokenizer.json"))
    return base, data


def _config(tmp: Path, data: Path, router: str = "top_p:p=0.5") -> Path:
    path = tmp / "lora.toml"
    path.write_text(CONFIG.format(router=router, data=data))
    return path


def test_train_resume_and_load(setup, tmp_path) -> None:
    base, data = setup
    config, out = _config(tmp_path, data, "dynmole:threshold=0.8"), tmp_path / "run"
    args = ["lora", "train", str(base), "--config", str(config), "--out", str(out)]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "code" in result.output and "experts/token" in result.output
    res = json.loads((out / "result.json").read_text())
    assert set(res["domains"]) == {"code", "prose"} and res["steps"] == 4
    assert res["router"]["name"] == "dynmole"
    again = runner.invoke(app, [*args, "--no-progress"])
    assert again.exit_code == 0 and "resumed from step 4" in again.output
    changed = runner.invoke(app, [*args, "--steps", "2", "--no-progress"])
    assert changed.exit_code == 2 and "train.steps" in changed.output  # refused, not mixed
    # the saved adapters load onto a fresh base and reproduce the training checkpoint
    from dynroute.models import DynMoEForCausalLM

    model = load_lora_experts(DynMoEForCausalLM.from_pretrained(base), out / "adapters")
    state = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    params = dict(model.named_parameters())
    trained = {k for k, p in params.items() if p.requires_grad}
    assert set(state) == trained  # the adapters and gates only: the base stays where it is
    assert all(torch.equal(params[k], v) for k, v in state.items())
    assert len(lora_layers(model)) == 4


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("base", "does not exist"),
        ("config", "config file"),
        ("router", "unknown router"),
        ("data", "domain folder"),
        ("toml", "invalid TOML"),
    ],
)
def test_bad_input_is_one_line_exit_2(setup, tmp_path, change: str, needle: str) -> None:
    base, data = setup
    config = _config(tmp_path, data)
    base_arg = str(base)
    args = {"--config": str(config), "--out": str(tmp_path / "run")}
    extra: list[str] = []
    if change == "base":
        base_arg = str(tmp_path / "missing")
    elif change == "config":
        args["--config"] = str(tmp_path / "missing.toml")
    elif change == "router":
        extra = ["--router", "no_such_router"]
    elif change == "data":
        extra = ["--data", str(tmp_path / "no_domains")]
    else:
        config.write_text("[lora\n")
    flat = [x for kv in args.items() for x in kv]
    result = runner.invoke(app, ["lora", "train", base_arg, *flat, *extra, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and needle in result.output
    named = {"base": "missing", "config": "missing.toml", "data": "no_domains", "toml": "lora.toml"}
    if change in named:
        assert named[change] in result.output


def test_domains_are_capped_and_split(setup) -> None:
    _, data = setup
    d = load_domains(data, 3000, 800)
    assert sorted(d) == ["code", "prose"]
    for splits in d.values():
        assert sum(len(t.encode()) for t in splits["train"]) <= 3000
        assert splits["validation"] and splits["train"]
    lic = lora_domains(5000, 1000, names=["licenses"])["licenses"]
    assert lic["train"] and lic["validation"]
    with pytest.raises(ValueError, match="unknown domain"):
        lora_domains(names=["poetry"])


def _adapters(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=False)["model"]


def _train_rows(run: Path) -> list[tuple]:
    keys = ("step", "loss", "lm_loss", "aux_loss", "lr", "grad_norm")
    return [tuple(r[k] for k in keys) for r in read_metrics(run / "metrics.jsonl", "train")]


def test_interrupted_run_resumes_to_the_same_adapters(setup, tmp_path) -> None:
    base, data = setup
    cfg = load_lora_config(_config(tmp_path, data, "top_k:k=2"))
    whole = train_lora(cfg, base, tmp_path / "whole", progress=False)
    assert train_lora(cfg, base, tmp_path / "cut", stop_after=2)["stopped"]
    resumed = train_lora(cfg, base, tmp_path / "cut", progress=False)
    assert resumed["resumed_from"] == 2
    a, b = _adapters(tmp_path / "whole"), _adapters(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole["domains"] == resumed["domains"]
    assert _train_rows(tmp_path / "whole") == _train_rows(tmp_path / "cut")  # bit for bit


def test_ctrl_c_finishes_the_step_checkpoints_and_resumes_exactly(setup, tmp_path) -> None:
    """As `dynroute train`: the first Ctrl-C ends the step, writes a checkpoint, raises
    TrainingInterrupted (the command exits 130); rerunning continues to the same adapters."""
    base, data = setup
    cfg = apply_overrides(
        load_lora_config(_config(tmp_path, data, "top_p:p=0.5")), steps=40, log_interval=1
    )
    train_lora(cfg, base, tmp_path / "whole", progress=False)
    run = tmp_path / "cut"

    def press_ctrl_c() -> None:  # once the steps run (before them Ctrl-C just interrupts)
        deadline = time.monotonic() + 60
        while not read_metrics(run / "metrics.jsonl", "train") and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    with stop_on_sigint(), pytest.raises(TrainingInterrupted) as stopped:
        presser.start()
        train_lora(cfg, base, run, progress=False)
    presser.join()
    step = stopped.value.step
    assert 0 < step < 40 and torch.load(run / "checkpoint.pt", weights_only=False)["step"] == step
    assert "rerun the same command to resume" in str(stopped.value)
    resumed = train_lora(cfg, base, run, progress=False)
    assert resumed["resumed_from"] == step
    a, b = _adapters(tmp_path / "whole"), _adapters(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _train_rows(tmp_path / "whole") == _train_rows(run)


def test_train_from_saved_dataset_with_domain_column(setup, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    base, folder = setup
    rows = [
        {"text": f"{i} " + (folder / name / f"{i}.txt").read_text(), "source": name}
        for name in ("code", "prose")
        for i in range(6)
    ]
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    d = load_domains(saved, 3000, 800, domain_column="source")
    assert sorted(d) == ["code", "prose"]
    for splits in d.values():
        assert splits["train"] and splits["validation"]
        assert sum(len(t.encode()) for t in splits["train"]) <= 3000
    config, out = _config(tmp_path, folder), tmp_path / "run"
    args = ["lora", "train", str(base), "--config", str(config), "--out", str(out),
            "--data", str(saved), "--domain-column", "source", "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert set(json.loads((out / "result.json").read_text())["domains"]) == {"code", "prose"}
    # a wrong column name is one error line naming the columns, exit 2
    args[args.index("source")], args[args.index(str(out))] = "topic", str(tmp_path / "run2")
    bad = runner.invoke(app, args)
    assert bad.exit_code == 2 and "topic" in bad.output and "Traceback" not in bad.output
