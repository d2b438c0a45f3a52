"""router="top_k" reproduces each family's own routing: logits, loss, aux loss, gradients."""

from __future__ import annotations

import pytest
import torch

from dynroute.hf import DynamicMoEBlock, adapted_blocks, apply_routing, routing_stats
from hf.tiny_models import FAMILY_NAMES, WITH_AUX_LOSS

IDS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_top_k_equals_unpatched_in_eval(tiny, family):
    model = tiny(family)
    with torch.no_grad():
        ref = model(IDS).logits
        apply_routing(model, "top_k")
        out = model(IDS).logits
        apply_routing(model, "top_k", k=1)  # a different routing must show in the logits
        other = model(IDS).logits
    assert adapted_blocks(model) and all(
        isinstance(b, DynamicMoEBlock) for b in adapted_blocks(model)
    )
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert (other - ref).abs().max() > 1e-2


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if f != "qwen3_next"])
def test_top_k_equals_unpatched_in_training(tiny, family):
    """Loss, aux loss (router logits are still recorded) and every gradient match."""
    ref_model, model = tiny(family).train(), apply_routing(tiny(family), "top_k").train()

    def run(m):
        out = m(IDS, labels=IDS, output_router_logits=True)
        out.loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        return out, grads

    ref, ref_grads = run(ref_model)
    out, grads = run(model)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-5)
    assert len(out.router_logits) == len(ref.router_logits) > 0
    if family in WITH_AUX_LOSS:
        assert ref.aux_loss.item() > 0
        torch.testing.assert_close(out.aux_loss, ref.aux_loss, rtol=0, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    assert any("experts.gate_up_proj" in n for n in grads)
    assert any("gate.weight" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_mixtral_router_jitter_matches_with_the_same_seed(tiny):
    ref_model = tiny("mixtral", router_jitter_noise=0.2).train()
    model = apply_routing(tiny("mixtral", router_jitter_noise=0.2), "top_k").train()
    torch.manual_seed(5)
    ref = ref_model(IDS).logits
    torch.manual_seed(5)
    out = model(IDS).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
def test_shared_experts_are_kept(tiny, family):
    """Zeroing the shared expert changes the adapted model's output: it is really used."""
    model = apply_routing(tiny(family), "top_k")
    with torch.no_grad():
        ref = model(IDS).logits
        for block in adapted_blocks(model):
            shared = getattr(block, "shared_expert", None) or block.shared_experts
            shared.down_proj.weight.zero_()
        assert (model(IDS).logits - ref).abs().max() > 1e-3


def test_bfloat16_model_runs_and_stays_close(tiny):
    model = tiny("qwen3_moe").to(torch.bfloat16)
    with torch.no_grad():
        ref = model(IDS).logits.float()
        out = apply_routing(model, "top_k")(IDS).logits
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    assert routing_stats(model)["mean_experts"] == 2.0
