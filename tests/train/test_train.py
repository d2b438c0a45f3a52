"""Training recipe: config parsing, schedule, atomic checkpoints, resume after SIGKILL."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dynroute.common.files import atomic_torch_save
from dynroute.models import DynMoEForCausalLM
from dynroute.train import (
    RunConfig,
    apply_overrides,
    load_checkpoint,
    load_config,
    lr_at,
    read_metrics,
    train,
)
from dynroute.train.loop import ConfigMismatchError
from tiny_runs import recipe_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # One shared tokenizer/token cache for the module keeps these tests fast.
    monkeypatch.setenv("DYNROUTE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_shipped_configs_parse() -> None:
    for name in ("tiny.toml", "demo.toml"):
        cfg = load_config(ROOT / "configs" / name)
        assert cfg.train.steps > 0 and cfg.data.source == "stdlib"


def test_config_errors_say_what_to_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    for text, message in [
        ("[train]\nstepz = 3\n", r"unknown key\(s\) \['stepz'\]"),
        ("[model]\nvocab_size = 3\n", r"\[data\] vocab_size"),
        # a router's parameters beside it (keyword form) must be its own; else the spec form
        (
            '[model]\nrouter = "top_k"\nk = 1\np = 0.4\n',
            r"\['p'\].*the router top_k \(k, normalize\)",
        ),
        ('[model]\nrouter = "top_p"\np = 1.5\n', r"bad.toml \[model\]: .*p must be in \(0, 1\]"),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_config(bad)
    with pytest.raises(FileNotFoundError, match="--config"):
        load_config(tmp_path / "missing.toml")


def test_overrides_and_round_trip() -> None:
    cfg = apply_overrides(RunConfig(), router="top_p:p=0.25", steps=9, seed=3, data=None)
    assert cfg.model == {"router": {"name": "top_p", "p": 0.25}}
    assert (cfg.train.steps, cfg.train.seed) == (9, 3)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # a flag lands in the first table that has the key: dtype is [train]'s, not the model's
    cfg = apply_overrides(cfg, dtype="bfloat16", data="corpus.txt", num_experts=2)
    assert cfg.train.dtype == "bfloat16" and cfg.data.source == "corpus.txt"
    assert cfg.model["num_experts"] == 2
    with pytest.raises(TypeError, match=r"unknown flag 'k'.*router=\"top_k:k=2\""):
        apply_overrides(cfg, k=2)  # a router's parameters go in its spec
    with pytest.raises(ValueError, match="unknown router"):
        apply_overrides(cfg, router="top_q:p=0.4")
    # the flag is the whole router: the file's keyword parameters do not override it
    keyword = RunConfig.from_dict({"model": {"router": "top_p", "p": 0.4, "d_model": 32}})
    assert apply_overrides(keyword, router="top_k:k=1").model == {
        "router": {"name": "top_k", "k": 1},
        "d_model": 32,
    }


def test_overrides_of_another_model_family() -> None:
    from dynroute.adaptive.config import AdaptiveConfig
    from dynroute.lora.config import LoRARunConfig

    adaptive = RunConfig.from_dict({"model": {"routing": "random"}}, model_config=AdaptiveConfig)
    cfg = apply_overrides(adaptive, routing="router", budget_target=0.5, steps=3)
    assert cfg.model == {"routing": "router", "budget_target": 0.5} and cfg.train.steps == 3
    assert cfg.model_config is AdaptiveConfig  # its [model] keys stay accepted
    lora = apply_overrides(
        LoRARunConfig(), router="dynmole:threshold=0.8", data="texts/", domain_column="topic"
    )
    assert lora.lora.router == {"name": "dynmole", "threshold": 0.8}
    assert (lora.data.source, lora.data.domain_column) == ("texts/", "topic")


def test_experts_override_lands_in_the_model_table() -> None:
    fields = RunConfig().table_keys()["model"]
    if "experts" not in fields:
        pytest.skip("DynMoEConfig has no experts field yet")
    cfg = apply_overrides(RunConfig(), experts="mlp:d_ff=64")
    assert cfg.model["experts"] == {"name": "mlp", "d_ff": 64}
    assert apply_overrides(RunConfig(), experts={"name": "mlp"}).model["experts"] == {"name": "mlp"}


def test_lr_schedule_warmup_then_cosine() -> None:
    lrs = [lr_at(s, 1.0, 0.1, 10, 100) for s in range(101)]
    assert lrs[9] == 1.0 and lrs[0] == pytest.approx(0.1)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[100] == pytest.approx(0.1)


def test_atomic_save_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"step": 1}, path)

    class Boom:
        def __reduce__(self) -> tuple:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"step": 2, "bad": Boom()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp files left


def _curve(run: Path) -> list[tuple]:
    keys = ("kind", "step", "tokens", "loss", "lm_loss", "aux_loss", "val_loss", "lr")
    return [tuple(r.get(k) for k in keys) for r in read_metrics(run / "metrics.jsonl")]


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path, keep_threads: None) -> None:
    config = recipe_run(tmp_path, steps=40)
    cfg = load_config(config)
    torch.set_num_threads(cfg.train.threads)  # as the command does: same kernels, same bits
    reference = train(cfg, tmp_path / "reference", progress=False)
    assert reference.steps == 40

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dynroute.cli", "train", "--config", str(config)]
    cmd += ["--out", str(run), "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = load_checkpoint(run / "checkpoint.pt")["step"]
    assert killed_at < 40, "the run finished before the kill; the test needs more steps"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.startswith(f"resuming from step {killed_at}")  # said at the start
    assert _curve(run) == _curve(tmp_path / "reference")  # bit-for-bit


def test_per_expert_layout_trains_and_resumes_exactly(tmp_path: Path, keep_threads: None) -> None:
    config = recipe_run(tmp_path, steps=8, model={"expert_layout": "per_expert"})
    cfg = load_config(config)
    assert cfg.model["expert_layout"] == "per_expert"
    reference = train(cfg, tmp_path / "reference", progress=False)
    run = tmp_path / "stopped"
    assert train(cfg, run, progress=False, stop_after=3).steps == 3
    assert train(cfg, run, progress=False).steps == 8
    assert _curve(run) == _curve(reference.out_dir)  # idle experts' optimizer state too
    model = DynMoEForCausalLM.from_pretrained(run / "model")
    assert model.config.expert_layout == "per_expert"
    assert len(model.blocks[0].ffn.experts.gate_up) == 4


def test_rerun_with_other_config_is_refused(tmp_path: Path, keep_threads: None) -> None:
    config = recipe_run(tmp_path, steps=4)
    cfg = load_config(config)
    train(cfg, tmp_path / "run", progress=False)
    again = train(cfg, tmp_path / "run", progress=False)  # finished run: nothing to redo
    assert again.resumed_from == 4 and again.final is not None
    with pytest.raises(ConfigMismatchError, match=r"model.router: 'top_p:p=0.4' -> .*'p': 0.3"):
        train(apply_overrides(cfg, router="top_p:p=0.3"), tmp_path / "run", progress=False)


def test_export_model_replaces_folder_and_cleans_leftovers(tmp_path: Path) -> None:
    from dynroute.models import DynMoEConfig, DynMoEForCausalLM
    from dynroute.train import export_model

    model = DynMoEForCausalLM(
        DynMoEConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, d_ff=8, num_experts=2)
    )
    (tmp_path / ".model.abc123").mkdir()  # what a SIGKILL mid-export leaves behind
    export_model(model, tmp_path / "model", {"note.txt": "first"})
    export_model(model, tmp_path / "model", {"note.txt": "second"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (tmp_path / "model" / "note.txt").read_text() == "second"
    assert (tmp_path / "model" / "model.safetensors").is_file()
