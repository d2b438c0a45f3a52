"""Training expert compute: the sum over steps of the measured k̄, kept across a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynroute.common.files import atomic_torch_save
from dynroute.train import load_checkpoint, load_config, read_metrics, train
from dynroute.train.compute import TrainingCompute
from tiny_runs import recipe_run


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNROUTE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(tmp_path: Path) -> object:
    # ReLU routing: k̄ moves from step to step; every step logged, so each row is one step's k̄
    config = recipe_run(
        tmp_path, steps=6, model={"router": "relu:target=1.5"}, log_interval=1,
        eval_interval=0, checkpoint_interval=3,
    )  # fmt: skip
    return load_config(config)


def test_training_compute_is_the_sum_of_each_steps_kbar(tmp_path: Path, one_thread: None) -> None:
    result = train(_config(tmp_path), tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == list(range(1, 7))
    per_step = [r["experts_per_layer"] for r in rows]
    compute = result.training_compute
    assert compute is not None and compute.steps == 6
    want = [sum(step[layer] for step in per_step) for layer in range(len(per_step[0]))]
    assert compute.sums == pytest.approx(want, rel=1e-6)
    assert len({round(r["mean_experts_per_token"], 6) for r in rows}) > 1  # k̄ really moved
    mean = sum(r["mean_experts_per_token"] for r in rows) / 6
    assert compute.mean_experts == pytest.approx(mean, rel=1e-6)
    # every logged row carries the running mean; the last one the whole run's
    assert rows[-1]["training_mean_experts_per_token"] == pytest.approx(compute.mean_experts)
    assert rows[0]["training_experts_per_layer"] == pytest.approx(per_step[0], rel=1e-6)
    # the export says it too (what the frontier and other programs read)
    info = json.loads((tmp_path / "run" / "model" / "dynroute_run.json").read_text())
    assert TrainingCompute.from_dict(info["training_compute"]) == compute
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["training_compute"] == (
        compute.to_dict()
    )


def test_a_resumed_run_continues_the_sum(tmp_path: Path, one_thread: None) -> None:
    cfg = _config(tmp_path)
    whole = train(cfg, tmp_path / "whole", progress=False).training_compute
    assert train(cfg, tmp_path / "cut", progress=False, stop_after=3).steps == 3
    resumed = train(cfg, tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 3
    assert resumed.training_compute is not None and whole is not None
    assert resumed.training_compute.steps == 6  # not restarted at the resume
    assert resumed.training_compute.sums == pytest.approx(whole.sums, rel=1e-12)
    again = train(cfg, tmp_path / "cut", progress=False)  # finished: reused, same numbers
    assert again.training_compute == resumed.training_compute


def test_a_checkpoint_without_the_count_counts_from_the_resume(
    tmp_path: Path, one_thread: None
) -> None:
    cfg = _config(tmp_path)
    train(cfg, tmp_path / "old", progress=False, stop_after=3)
    state = load_checkpoint(tmp_path / "old" / "checkpoint.pt")
    del state["training_compute"]  # as written before the count existed
    atomic_torch_save(state, tmp_path / "old" / "checkpoint.pt")
    compute = train(cfg, tmp_path / "old", progress=False).training_compute
    assert compute is not None and compute.steps == 3  # says what it covers
    rows = read_metrics(tmp_path / "old" / "metrics.jsonl", "train")
    assert rows[-1]["training_steps_counted"] == 3


def test_sums_of_different_layer_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="2 layers' expert sums added to 1"):
        TrainingCompute((1.0,), 1).plus([1.0, 2.0], 1)
    assert torch.isnan(torch.tensor(TrainingCompute().mean_experts))


def test_a_restart_from_the_exported_model_keeps_the_count(
    tmp_path: Path, one_thread: None
) -> None:
    cfg = _config(tmp_path)
    first = train(cfg, tmp_path / "run", progress=False, stop_after=3).training_compute
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"damaged")
    compute = train(cfg, tmp_path / "run", progress=False, restart_from_model=True)
    assert compute.training_compute is not None and first is not None
    assert compute.training_compute.steps == 6  # model/dynroute_run.json held steps 1-3
    assert all(a > b for a, b in zip(compute.training_compute.sums, first.sums, strict=True))
