"""Execution settings of the recipe: bf16 autocast, compile, gradient accumulation,
activation checkpointing, device-independent checkpoints, `--nproc` data parallelism."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.train import apply_overrides, load_checkpoint, load_config, read_metrics, train
from dynroute.train.blocks import checkpoint_blocks, compile_blocks
from dynroute.train.config import RunConfig, TrainConfig
from dynroute.train.device import resolve_device
from tiny_runs import recipe_run

# Router losses are per micro-batch (per rank), as in every data-parallel MoE trainer;
# without them the loss of N micro-batches of b rows is exactly that of one batch of N·b.
NO_AUX = {"load_balance_weight": 0.0, "dynamic_weight": 0.0}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNROUTE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _train_rows(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


def _tiny_model(router: str = "top_p", **extra: object) -> DynMoEForCausalLM:
    cfg = DynMoEConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=32, num_experts=4,
        router=router, p=0.4, **extra,
    )  # fmt: skip
    return DynMoEForCausalLM(cfg)


def test_bfloat16_autocast_trains_within_2_percent_of_float32(tmp_path: Path) -> None:
    cfg = load_config(recipe_run(tmp_path, steps=30, eval_interval=0, checkpoint_interval=30))
    fp32 = train(cfg, tmp_path / "fp32", progress=False)
    bf16 = train(apply_overrides(cfg, dtype="bfloat16"), tmp_path / "bf16", progress=False)
    assert fp32.final is not None and bf16.final is not None
    first = _train_rows(tmp_path / "fp32")[0]["lm_loss"]
    assert fp32.final["val_loss"] < first - 0.5  # it learned something in 30 steps
    assert abs(bf16.final["val_loss"] - fp32.final["val_loss"]) <= 0.02 * fp32.final["val_loss"]
    # Master weights and optimizer state stay float32, on the CPU, in the checkpoint.
    state = load_checkpoint(tmp_path / "bf16" / "checkpoint.pt")
    tensors = [*state["model"].values()]
    tensors += [v for s in state["optimizer"]["state"].values() for v in s.values()]
    assert all(t.device.type == "cpu" for t in tensors)
    assert {t.dtype for t in state["model"].values()} == {torch.float32}


def test_grad_accum_2_of_b_equals_one_batch_of_2b(tmp_path: Path) -> None:
    cfg = load_config(recipe_run(tmp_path, steps=6, model=NO_AUX, eval_interval=0))
    double = apply_overrides(cfg)
    double.train.batch_size = 2 * cfg.train.batch_size
    one = train(double, tmp_path / "batch", progress=False)
    accum = train(apply_overrides(cfg, grad_accum=2), tmp_path / "accum", progress=False)
    assert one.tokens == accum.tokens
    for a, b in zip(_train_rows(tmp_path / "batch"), _train_rows(tmp_path / "accum"), strict=True):
        assert a["lm_loss"] == pytest.approx(b["lm_loss"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    weights = load_checkpoint(accum.out_dir / "checkpoint.pt")["model"]
    for key, value in load_checkpoint(one.out_dir / "checkpoint.pt")["model"].items():
        torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("router", ["top_k", "top_p"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(router: str) -> None:
    torch.manual_seed(0)
    plain = _tiny_model(router)
    again = _tiny_model(router)
    again.load_state_dict(plain.state_dict())
    assert len(checkpoint_blocks(again)) == 2
    ids = torch.randint(0, 64, (3, 16))
    for model in (plain, again):
        model(ids, labels=ids).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():  # evaluation skips the checkpoint entirely
        torch.testing.assert_close(again(ids).logits, plain(ids).logits)


def test_compiled_blocks_match_eager_loss_and_gradients() -> None:
    # aot_eager runs the same dynamo capture, graph breaks and AOT autograd as inductor,
    # without its C++ compile (minutes on a busy 2-core box; see the slow test below).
    torch.manual_seed(0)
    eager = _tiny_model("top_p")
    compiled = _tiny_model("top_p")
    compiled.load_state_dict(eager.state_dict())
    compile_blocks(compiled, backend="aot_eager")
    ids = torch.randint(0, 64, (3, 16))
    for _ in range(2):  # the second call runs the cached graphs
        for model in (eager, compiled):
            model.zero_grad()
            out = model(ids, labels=ids)
            out.loss.backward()
    torch.testing.assert_close(compiled(ids).logits, eager(ids).logits)
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_true_trains_like_eager_with_inductor(tmp_path: Path) -> None:
    cfg = load_config(recipe_run(tmp_path, steps=3, eval_interval=0))
    eager = train(cfg, tmp_path / "eager", progress=False)
    compiled = train(apply_overrides(cfg, compile=True), tmp_path / "compiled", progress=False)
    for a, b in zip(_train_rows(eager.out_dir), _train_rows(compiled.out_dir), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_checkpoint_resumes_under_other_execution_settings(tmp_path: Path) -> None:
    """Trained in bf16 with accumulation of micro-batches' checkpointed activations, resumed in
    float32 without checkpointing: the run folder accepts it and the checkpoint loads."""
    cfg = load_config(recipe_run(tmp_path, steps=6, eval_interval=0))
    fast = apply_overrides(cfg, dtype="bfloat16", activation_checkpointing=True, device="cpu")
    run = tmp_path / "run"
    assert train(fast, run, progress=False, stop_after=3).steps == 3
    state = load_checkpoint(run / "checkpoint.pt")
    assert all(t.device.type == "cpu" for t in state["model"].values())
    resumed = train(apply_overrides(cfg, device="auto"), run, progress=False)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    model = DynMoEForCausalLM.from_pretrained(run / "model")
    assert next(model.parameters()).dtype == torch.float32
    # grad_accum changes what a step is: that is a different run.
    with pytest.raises(ValueError, match="grad_accum"):
        train(apply_overrides(cfg, grad_accum=2), run, progress=False)


def test_bad_execution_settings_fail_early_in_one_line() -> None:
    bad = {
        "dtype": "float16",
        "device": "gpu",
        "grad_accum": 0,
        "parallel": "zero3",
        "compile": "yes",
    }
    for key, value in bad.items():
        with pytest.raises(ValueError, match=rf"x\.toml \[train\]: {key} = ") as err:
            RunConfig.from_dict({"train": {key: value}}, origin="x.toml")
        assert "\n" not in str(err.value)
    assert TrainConfig(grad_accum=2, batch_size=4, seq_len=8).tokens_per_step == 64


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only box")
def test_cuda_on_a_cpu_machine_is_a_clear_cli_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    config = recipe_run(tmp_path, steps=2)
    cmd = [sys.executable, "-m", "dynroute.cli", "train", "--config", str(config)]
    cmd += ["--out", str(tmp_path / "run"), "--device", "cuda:0", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "no CUDA GPU" in done.stderr
    assert not (tmp_path / "run").exists()  # failed before touching the folder


def _nproc_run(tmp_path: Path, parallel: str) -> None:
    config = recipe_run(tmp_path, steps=4, model=NO_AUX, eval_interval=0)
    cfg = load_config(config)
    double = apply_overrides(cfg)
    double.train.batch_size = 2 * cfg.train.batch_size
    single = train(double, tmp_path / "single", progress=False)

    run = tmp_path / "nproc2"
    cmd = [sys.executable, "-m", "dynroute.cli", "train", "--config", str(config)]
    cmd += ["--out", str(run), "--no-progress", "--nproc", "2"]
    cmd += ["--fsdp"] if parallel == "fsdp" else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("done: 4 steps") == 1  # rank 0 alone reports

    for a, b in zip(_train_rows(tmp_path / "single"), _train_rows(run), strict=True):
        assert a["tokens"] == b["tokens"]
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5)
    state = load_checkpoint(run / "checkpoint.pt")
    ref = load_checkpoint(single.out_dir / "checkpoint.pt")
    assert state["step"] == 4 and len(state["sampler_rngs"]) == 2
    for key, value in ref["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=1e-4, atol=1e-6)
    moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    ref_moments = [s["exp_avg"] for s in ref["optimizer"]["state"].values()]
    for m, r in zip(moments, ref_moments, strict=True):
        torch.testing.assert_close(m, r, rtol=1e-3, atol=1e-6)


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_nproc_2_ddp_on_gloo_equals_one_process_with_the_doubled_batch(tmp_path: Path) -> None:
    _nproc_run(tmp_path, "ddp")


@pytest.mark.slow
def test_nproc_2_fsdp_on_gloo_equals_one_process_with_the_doubled_batch(tmp_path: Path) -> None:
    _nproc_run(tmp_path, "fsdp")


@pytest.mark.slow
def test_two_nodes_on_loopback_train_like_nproc_2(tmp_path: Path) -> None:
    """--nnodes 2 with one process per "machine" (both on 127.0.0.1) == --nproc 2."""
    from dynroute.common.net import free_port

    config = recipe_run(tmp_path, steps=3, model=NO_AUX, eval_interval=0)
    port = str(free_port())
    base = [sys.executable, "-m", "dynroute.cli", "train", "--config", str(config)]
    base += ["--no-progress", "--nnodes", "2", "--master-addr", "127.0.0.1"]
    base += ["--master-port", port, "--nproc", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [*base, "--out", str(tmp_path / "nodes"), "--node-rank", str(r)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs
    cmd = [*base[:6], "--out", str(tmp_path / "local"), "--nproc", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for a, b in zip(_train_rows(tmp_path / "local"), _train_rows(tmp_path / "nodes"), strict=True):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-5)
