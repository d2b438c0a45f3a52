"""dynroute.posthoc on small models: calibration hits its targets, router-only fine-tuning
trains only the gates, null experts at −inf are the trained model, the fixes run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dynroute.hf import apply_routing
from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.posthoc import (
    METHODS,
    STATIC,
    DenseModelError,
    SweepData,
    SweepSettings,
    fine_tune,
    gate_parameters,
    moe_slots,
    run_fix,
    sweep,
)
from dynroute.posthoc.measure import measure
from dynroute.posthoc.slots import NULL_OFF
from hf.tiny_models import build_tiny

VOCAB = 64


def dynmoe(k: int = 2, num_experts: int = 8, normalize: bool = True) -> DynMoEForCausalLM:
    """A small DynMoE with gates spread wide (a fresh gate's near-uniform probabilities
    make experts per token a step function of every knob)."""
    torch.manual_seed(0)
    router = {"name": "top_k", "k": k, "normalize": normalize}
    cfg = DynMoEConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=32,
                       num_experts=num_experts, router=router)  # fmt: skip
    model = DynMoEForCausalLM(cfg).eval()
    for layer in model.moe_layers():
        torch.nn.init.normal_(layer.gate.weight, std=0.5)
    return model


def data(seed: int = 0, windows: int = 32, seq_len: int = 32) -> SweepData:
    gen = np.random.default_rng(seed)
    ev = gen.integers(0, VOCAB, (windows, seq_len + 1))
    calib = torch.as_tensor(gen.integers(0, VOCAB, (windows, seq_len)))
    return SweepData(ev, list(calib.split(8)), gen.integers(0, VOCAB, 20_000))


def _check_targets(rows: list[dict], methods: list[str], targets: tuple[float, ...]) -> None:
    dynamic = [r for r in rows if r["method"] in methods]
    assert len(dynamic) == len(methods) * len(targets)
    for row in dynamic:
        wanted = row["target"] * row["k"]
        assert abs(row["mean_experts"] - wanted) <= 0.03 * wanted, row
    # per-layer budgets: every layer at the target, not only their mean
    for row in (r for r in dynamic if r["method"] == "top_p_layer"):
        wanted = row["target"] * row["k"]
        assert all(abs(e - wanted) <= 0.05 * wanted for e in row["per_layer_experts"]), row


def test_sweep_lands_within_3_percent_of_the_target() -> None:
    model, methods = dynmoe(k=4), list(METHODS)
    rows = sweep(model, data(windows=48), SweepSettings(targets=(0.75,), methods=methods))
    _check_targets(rows, methods, (0.75,))


@pytest.mark.slow
def test_sweep_lands_within_3_percent_of_every_target() -> None:
    model, methods, targets = dynmoe(k=4), list(METHODS), (0.9, 0.6, 0.5)
    rows = sweep(model, data(windows=48), SweepSettings(targets=targets, methods=methods))
    _check_targets(rows, methods, targets)


def test_static_rows_and_the_model_comes_back_as_trained() -> None:
    model, d = dynmoe(k=3), data()
    slots = moe_slots(model)
    before = measure(model, slots, d.windows)
    rows = sweep(model, d, SweepSettings(targets=[0.5], methods=[STATIC, "top_p"]))
    static = [r for r in rows if r["method"] == STATIC]
    assert [r["mean_experts"] for r in static] == [1.0, 2.0]
    # the first layer sees the trained model's inputs: its top-1 is in every smaller top-k
    assert all(r["per_layer_top1_kept"][0] == 1.0 for r in static)
    after = measure(model, slots, d.windows)
    assert after.val_loss == before.val_loss and after.mean_experts == 3.0


def test_router_only_fine_tune_changes_only_gate_parameters() -> None:
    model = dynmoe()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    slots = moe_slots(model)
    METHODS["top_p_norm"].apply(slots[0], 0.5)
    fine_tune(model, data().train_tokens, gate_parameters(slots), steps=3, batch_size=2,
              seq_len=16, lr=1e-2)  # fmt: skip
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".gate." in n for n in changed), changed
    assert all(p.requires_grad for p in model.parameters())  # given back after the loop


def test_router_only_fine_tune_of_a_transformers_model() -> None:
    model = apply_routing(build_tiny("mixtral"), "top_k")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens = np.random.default_rng(0).integers(0, 128, 5000)
    fine_tune(model, tokens, gate_parameters(moe_slots(model)), steps=2, batch_size=2,
              seq_len=16, lr=1e-2)  # fmt: skip
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".gate." in n for n in changed), changed


def test_null_experts_at_minus_inf_reproduce_the_trained_model() -> None:
    model = dynmoe()
    ids = torch.randint(0, VOCAB, (2, 24))
    slots = moe_slots(model)
    with torch.no_grad():
        original = model(ids)
        for slot in slots:
            gate = slot.add_null_experts(slot.k)
            assert gate.null_bias.shape == (slot.k,) and (gate.null_bias == NULL_OFF).all()
        converted = model(ids)
    for before, after in zip(original.aux, converted.aux, strict=True):  # the same pairs
        assert torch.equal(before.routing.token, after.routing.token)
        assert torch.equal(before.routing.expert, after.routing.expert)
        # the same weights, up to rounding: softmax of the kept logits vs p / sum(p)
        torch.testing.assert_close(after.routing.weight, before.routing.weight)
    torch.testing.assert_close(converted.logits, original.logits, rtol=0, atol=1e-5)
    with torch.no_grad():  # nulls that win drop real experts: the knob works
        for slot in slots:
            slot.gate.null_bias.fill_(0.0)
        assert float(model(ids).experts_per_layer.mean()) < 2.0


def test_null_experts_refuse_a_gate_without_renormalised_weights() -> None:
    slot = moe_slots(dynmoe(normalize=False))[0]
    with pytest.raises(ValueError, match="not be exact"):
        slot.add_null_experts(2)


@pytest.mark.parametrize(
    "fix", ["router_ft", "null_ft", pytest.param("distill", marks=pytest.mark.slow)]
)
def test_each_fix_runs_on_its_budget_at_the_target(fix: str) -> None:
    model, d = dynmoe(), data()
    base = measure(model, moe_slots(model), d.windows)
    settings = SweepSettings(fix_tokens=256, fix_batch=2, fix_seq_len=16)
    row = run_fix(fix, model, d, 0.75, base, settings)
    assert row is not None and row["fix_tokens"] == 256 and row["fix_steps"] == 8
    assert abs(row["mean_experts"] - 1.5) <= 0.05 * 1.5, row
    assert row["base_val_loss"] == base.val_loss
    assert all(isinstance(s.gate, torch.nn.Linear) for s in moe_slots(model))  # a copy tuned


def test_a_model_without_top_k_is_refused() -> None:
    cfg = DynMoEConfig(vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2, d_ff=16,
                       num_experts=4, router={"name": "top_p", "p": 0.4})  # fmt: skip
    with pytest.raises(DenseModelError, match="not top-k"):
        moe_slots(DynMoEForCausalLM(cfg))


def test_the_python_blocks_of_docs_posthoc_run() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "posthoc.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, str(doc), "exec"), {})
