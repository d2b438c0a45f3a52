"""A single-expert LoRA is peft's LoRA: same outputs and adapter gradients; converters."""

from __future__ import annotations

import copy

import pytest
import torch

from dynroute.lora import add_lora_experts, lora_layers, merge_lora_experts
from dynroute.lora.peft import from_peft, to_peft_state_dict
from lora_models import tiny_hf

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj", "down_proj"]
R, ALPHA = 4, 8.0


def _peft_model(base: torch.nn.Module, seed: int = 3):
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0)
    model = peft.get_peft_model(base, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained-looking adapter: non-zero B
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _peft_modules(model) -> dict[str, torch.nn.Module]:
    prefix = "base_model.model."
    return {
        n[len(prefix) :]: m
        for n, m in model.named_modules()
        if n.startswith(prefix) and hasattr(m, "lora_A") and hasattr(m, "base_layer")
    }


def test_single_expert_equals_peft_outputs_and_gradients() -> None:
    base = tiny_hf("llama")
    ours = add_lora_experts(copy.deepcopy(base), TARGETS, num_experts=1, rank=R, alpha=ALPHA,
                            router="top_k", k=1)  # fmt: skip
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        plain = base(ids).logits
    theirs = _peft_model(base)
    mods, layers = _peft_modules(theirs), lora_layers(ours)
    assert sorted(mods) == sorted(layers) and len(layers) == 6
    with torch.no_grad():  # the same A/B in each layout
        for name, m in mods.items():
            layers[name].experts.A[0].copy_(m.lora_A["default"].weight.t())
            layers[name].experts.B[0].copy_(m.lora_B["default"].weight.t())
    out_ours, out_theirs = ours(ids, labels=ids), theirs(ids, labels=ids)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, rtol=1e-5, atol=1e-6)
    assert (out_ours.logits - plain).abs().max() > 1e-3  # the adapters do change the output
    out_ours.loss.backward()
    out_theirs.loss.backward()
    for name, m in mods.items():
        experts = layers[name].experts
        assert experts.B.grad.abs().max() > 0
        torch.testing.assert_close(experts.A.grad[0], m.lora_A["default"].weight.grad.t(),
                                   rtol=1e-4, atol=1e-7)  # fmt: skip
        torch.testing.assert_close(experts.B.grad[0], m.lora_B["default"].weight.grad.t(),
                                   rtol=1e-4, atol=1e-7)  # fmt: skip


def test_from_peft_and_back() -> None:
    theirs = _peft_model(tiny_hf("llama"))
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        expected = theirs(ids).logits
    ours = from_peft(copy.deepcopy(theirs))
    assert type(ours).__name__ == "LlamaForCausalLM" and len(lora_layers(ours)) == 6
    assert ours.lora_experts_config["alpha"] == ALPHA and ours.lora_experts_config["rank"] == R
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, expected, rtol=1e-5, atol=1e-6)

    # ours -> peft state dict -> a fresh peft model: the same function again
    state = to_peft_state_dict(ours)
    assert set(state) == set(peft.get_peft_model_state_dict(theirs))
    fresh = peft.get_peft_model(tiny_hf("llama"), peft.LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0))  # fmt: skip
    peft.set_peft_model_state_dict(fresh, state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, expected, rtol=1e-5, atol=1e-6)
        merged = merge_lora_experts(ours)(ids).logits  # from_peft output merges exactly
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)


def test_converters_refuse_what_they_cannot_convert() -> None:
    mixture = add_lora_experts(tiny_hf("llama"), ["q_proj"], num_experts=2, rank=2)
    with pytest.raises(ValueError, match="num_experts=1"):
        to_peft_state_dict(mixture)
    with pytest.raises(ValueError, match="no peft LoRA"):
        from_peft(tiny_hf("llama"))
    dora = peft.get_peft_model(tiny_hf("llama"), peft.LoraConfig(
        r=2, target_modules=["q_proj"], use_dora=True))  # fmt: skip
    with pytest.raises(ValueError, match="DoRA"):
        from_peft(dora)
