"""Dynamic routers on adapted models: fewer experts, finite outputs, generate(), errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from dynroute.hf import (
    RouterSpec,
    UnsupportedModelError,
    adapted_blocks,
    apply_routing,
    remove_routing,
    reset_routing_stats,
    router_aux_loss,
    routing_config,
    routing_stats,
)
from dynroute.routing import Routing, top_k
from hf.tiny_models import FAMILY_NAMES

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))


def mean_experts(model, **kwargs) -> float:
    apply_routing(model, **kwargs)
    reset_routing_stats(model)
    with torch.no_grad():
        logits = model(IDS).logits
    assert torch.isfinite(logits).all()
    return routing_stats(model)["mean_experts"]


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if f != "qwen3_next"])
def test_top_p_uses_fewer_experts_as_p_falls(tiny, family):
    model = tiny(family)
    means = [mean_experts(model, router="top_p", p=p) for p in (0.95, 0.7, 0.4, 0.1)]
    assert all(a >= b for a, b in itertools.pairwise(means)), means
    assert means[0] > means[-1] >= 1.0
    assert means[-1] < 2.0  # fewer than the model's own k=2 at a small p
    out = model.generate(IDS[:1, :4], max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 9)


def test_top_p_max_experts_caps_every_layer(tiny):
    model = tiny("olmoe")
    apply_routing(model, "top_p", p=1.0, max_experts=3)
    apply_routing(model, "top_p", p=1.0, max_experts=3)  # re-applying updates, not nests
    for block in adapted_blocks(model):
        block.record_routing = True
    with torch.no_grad():
        model(IDS)
    for block in adapted_blocks(model):
        assert block.last_routing.experts_per_token().max().item() == 3
        assert type(block.original).__name__ == "OlmoeSparseMoeBlock"


def test_null_experts_threshold_drops_experts(tiny):
    model = tiny("mixtral")
    low = mean_experts(model, router="null_experts", null_logit=-30.0)
    mid = mean_experts(model, router="null_experts", null_logit=0.0)
    high = mean_experts(model, router="null_experts", null_logit=30.0)
    assert low == 2.0 and high == 0.0 and 0.0 < mid < 2.0


def test_normalize_override_changes_outputs_of_an_unnormalised_family(tiny):
    model = tiny("olmoe")
    with torch.no_grad():
        raw = apply_routing(model, "top_k")(IDS).logits
        norm = apply_routing(model, "top_k", normalize=True)(IDS).logits
    assert (raw - norm).abs().max() > 1e-3
    assert routing_config(model)["layers"]["0"] == {"router": "top_k", "normalize": True}


def test_callable_router_gets_raw_logits_and_is_used_unchanged(tiny):
    seen = []

    def one_expert(logits: torch.Tensor) -> Routing:
        seen.append(logits.shape)
        return top_k(logits, k=1, normalize=False)

    model = apply_routing(tiny("qwen2_moe"), one_expert)
    with torch.no_grad():
        model(IDS)
    assert seen[-2:] == [(24, 8), (24, 8)]  # before: apply_routing's dry run
    assert routing_stats(model)["mean_experts"] == 1.0
    assert not hasattr(model.config, "dynroute_routing")  # a callable cannot be saved


def test_per_layer_settings_and_stats(tiny):
    model = apply_routing(tiny("qwen3_moe"), "top_k")
    apply_routing(model, "top_k", k=1, layers=[1])
    with torch.no_grad():
        model(IDS)
    stats = routing_stats(model)
    assert stats["per_layer"] == {0: 2.0, 1: 1.0}
    assert stats["mean_experts"] == 1.5 and stats["expert_fraction"] == 0.75
    assert routing_config(model)["layers"] == {
        "0": {"router": "top_k"},
        "1": {"router": "top_k", "k": 1},
    }


def test_a_router_spec_applies_as_its_name_and_arguments(tiny):
    # a spec read back from config.json is applied as is (what load_patched does)
    spec = RouterSpec.from_dict({"router": "top_p", "p": 0.3, "normalize": True})
    by_spec = apply_routing(tiny("olmoe"), spec, layers=[1])
    by_name = apply_routing(tiny("olmoe"), "top_p:p=0.3", normalize=True, layers=[1])
    assert routing_config(by_spec) == routing_config(by_name)
    saved = routing_config(by_spec)["layers"]["1"]
    assert saved == {"router": "top_p", "p": 0.3, "normalize": True}
    with torch.no_grad():
        torch.testing.assert_close(by_spec(IDS).logits, by_name(IDS).logits, rtol=0, atol=0)
    with pytest.raises(TypeError, match="put them into the spec"):
        apply_routing(tiny("olmoe"), spec, p=0.5)


def test_routing_callback_and_last_routing(tiny):
    model = apply_routing(tiny("deepseek_v3"), "top_p", p=0.5)
    calls = []
    blocks = adapted_blocks(model)
    blocks[0].routing_callback = lambda block, routing: calls.append((block.layer_index, routing))
    with torch.no_grad():
        model(IDS)
    assert blocks[1].last_routing is None  # not kept unless asked
    ((layer, routing),) = calls
    assert layer == 0 and routing.num_tokens == IDS.numel() and routing.num_experts == 8
    # DeepSeek-V3 keeps its group limit: every token's experts lie in its top-2 of 4 groups.
    groups = (routing.expert // 2).view(-1)
    per_token = torch.zeros(routing.num_tokens, 4, dtype=torch.bool)
    per_token[routing.token, groups] = True
    assert per_token.sum(dim=1).max().item() <= 2


def test_remove_routing_restores_the_original_blocks(tiny):
    model = tiny("mixtral")
    with torch.no_grad():
        ref = model(IDS).logits
        apply_routing(model, "top_p", p=0.3)
        assert (model(IDS).logits - ref).abs().max() > 1e-3
        remove_routing(model)
        torch.testing.assert_close(model(IDS).logits, ref)
    assert not adapted_blocks(model) and not hasattr(model.config, "dynroute_routing")


def test_state_dict_names_are_unchanged(tiny):
    model = tiny("qwen2_moe")
    before = set(model.state_dict())
    assert set(apply_routing(model, "top_p", p=0.5).state_dict()) == before


def test_unsupported_model_lists_supported_families():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    with pytest.raises(UnsupportedModelError, match=r"model_type='llama'.*Mixtral \(mixtral\)"):
        apply_routing(LlamaForCausalLM(cfg), "top_k")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"router": "top_p", "p": 1.5}, ValueError, r"p must be in \(0, 1\]"),
        ({"router": "top_p"}, TypeError, "missing required argument"),
        ({"router": "top_p", "p": 0.5, "q": 1}, TypeError, r"unknown argument\(s\) \['q'\]"),
        ({"router": "top_k", "k": 9}, ValueError, r"k must be in \[1, 8\]"),
        ({"router": "null_experts"}, TypeError, "null_logit"),
        ({"router": "sparsemax"}, ValueError, "unknown router 'sparsemax'"),
        ({"router": "top_k", "layers": [7]}, ValueError, "matched no MoE block"),
    ],
)
def test_bad_arguments_fail_at_apply_time(tiny, kwargs, error, match):
    with pytest.raises(error, match=match):
        apply_routing(tiny("olmoe"), **kwargs)


def test_training_step_with_top_p_updates_router_and_experts(tiny):
    model = apply_routing(tiny("olmoe"), "top_p", p=0.5).train()
    out = model(IDS, labels=IDS, output_router_logits=True)
    out.loss.backward()
    block = adapted_blocks(model)[0]
    assert block.gate.weight.grad.abs().sum() > 0
    assert block.experts.gate_up_proj.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("family", "overrides", "sparse_layers"),
    [
        ("qwen2_moe", {"decoder_sparse_step": 2}, [1]),
        ("qwen3_moe", {"mlp_only_layers": [1]}, [0]),
        ("glm4_moe", {}, [1]),  # first_k_dense_replace=1
    ],
)
def test_dense_layers_are_left_alone(tiny, family, overrides, sparse_layers):
    model = apply_routing(tiny(family, **overrides), "top_p", p=0.5)
    assert [b.layer_index for b in adapted_blocks(model)] == sparse_layers
    with torch.no_grad():
        assert torch.isfinite(model(IDS).logits).all()
    assert list(routing_stats(model)["per_layer"]) == sparse_layers


def test_layers_subset_gives_the_other_layers_their_own_routing(tiny):
    model = apply_routing(tiny("olmoe"), "top_p", p=0.2, layers=[1])
    assert routing_config(model)["layers"] == {
        "0": {"router": "top_k"},
        "1": {"router": "top_p", "p": 0.2},
    }
    with torch.no_grad():
        model(IDS)
    stats = routing_stats(model)["per_layer"]
    assert stats[0] == 2.0 and stats[1] < 2.0


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "olmoe"])
def test_router_aux_loss_follows_the_dynamic_routing(tiny, family):
    model = apply_routing(tiny(family), "top_p", p=0.5).train()
    out = model(IDS, labels=IDS)
    aux = router_aux_loss(model, load_balance_weight=1.0, dynamic_weight=0.0)
    blocks = adapted_blocks(model)
    # load balance reads 1.0 at perfect balance: one such term per adapted block
    assert torch.isfinite(aux) and 0.5 * len(blocks) < aux.item() < 8.0 * len(blocks)
    (out.loss + aux).backward()
    assert all(b.gate.weight.grad is not None for b in blocks)
    only_gate = apply_routing(tiny(family), "top_p", p=0.5).train()
    only_gate(IDS)
    router_aux_loss(only_gate).backward()  # the router loss alone trains the gates
    assert all(b.gate.weight.grad.abs().sum() > 0 for b in adapted_blocks(only_gate))


def test_router_aux_loss_needs_a_training_forward(tiny):
    model = apply_routing(tiny("olmoe"), "top_p", p=0.5).eval()
    model(IDS)
    with pytest.raises(ValueError, match="training"):
        router_aux_loss(model)
