"""LoRA experts on frozen bases: exact at init, gradients only on adapters, grouped = loop."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dynroute.dispatch import grouped, loop
from dynroute.lora import (
    LoRAExperts,
    LoRAMoELinear,
    SMoRAExperts,
    add_lora_experts,
    lora_aux_loss,
    lora_layers,
    trainable_parameters,
)
from dynroute.routing import make_router
from hf.tiny_models import build_tiny
from lora_models import randomize_adapters, tiny_dynmoe, tiny_hf

ROUTERS = [
    "top_k:k=1",
    "top_k:k=2",
    "top_p:p=0.5",
    "null_experts:k=2,num_null=2",
    "dynmole",
    "dynmole:threshold=0.5,p=0.4,k=2",
]


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def _builders():
    return {
        "dynmoe": (tiny_dynmoe, ["qkv", "proj"]),
        "llama": (lambda: tiny_hf("llama"), ["q_proj", "v_proj", "up_proj"]),
        "qwen2": (lambda: tiny_hf("qwen2"), ["q_proj", "k_proj", "o_proj"]),
        "qwen2_moe": (lambda: build_tiny("qwen2_moe"), ["q_proj", "v_proj"]),
    }


@pytest.mark.parametrize("family", list(_builders()))
@pytest.mark.parametrize("router", ["top_k:k=2", "top_p:p=0.4", "null_experts:k=1,num_null=2"])
def test_init_equals_base_exactly(family: str, router: str) -> None:
    build, targets = _builders()[family]
    ids = torch.randint(0, 64, (2, 7))
    base = build()
    with torch.no_grad():
        expected = _logits(base, ids)
        add_lora_experts(base, targets, num_experts=3, rank=4, alpha=8, router=router)
        got = _logits(base, ids)
    assert len(lora_layers(base)) >= 2 * len(targets) - 1  # 2 layers (qkv/proj: both)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("family", ["dynmoe", "llama", "qwen2_moe"])
def test_only_adapters_and_gates_get_gradients(family: str) -> None:
    build, targets = _builders()[family]
    model = build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    add_lora_experts(model, targets, num_experts=3, rank=2, router="dynmole:threshold=0.5")
    randomize_adapters(model)
    model.train()
    ids = torch.randint(0, 64, (2, 6))
    loss = _logits(model, ids).float().logsumexp(-1).mean() + lora_aux_loss(model)
    loss.backward()
    for name, p in model.named_parameters():
        adapter = ".experts." in name and name.rsplit(".", 1)[-1] in ("A", "B")
        adapter |= any(name == f"{m}.gate.weight" for m in lora_layers(model))
        assert p.requires_grad == adapter, name
        if adapter:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    # the base weights are the same tensors, untouched
    for name, p in model.named_parameters():
        key = name.replace(".base.", ".")
        if not p.requires_grad and key in before:
            assert torch.equal(p, before[key]), name
    assert trainable_parameters(model) == sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad
    )


def test_errors_are_clear() -> None:
    model = tiny_dynmoe()
    with pytest.raises(ValueError, match=r"its linears are named.*qkv"):
        add_lora_experts(model, ["q_proj"])
    add_lora_experts(model, ["qkv"], num_experts=2, rank=2)
    with pytest.raises(ValueError, match=r"already has LoRA experts"):
        add_lora_experts(model, ["proj"])
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        LoRAMoELinear(nn.Conv1d(2, 2, 1))  # type: ignore[arg-type]


def test_gate_is_not_wrapped_twice() -> None:
    # "gate" would match the wrapper's own gate if targets were matched after replacing
    model = nn.Sequential()
    model.add_module("gate", nn.Linear(4, 4))
    add_lora_experts(model, ["gate"], num_experts=2, rank=1)
    assert isinstance(model.gate, LoRAMoELinear) and isinstance(model.gate.gate, nn.Linear)


@settings(max_examples=25)
@given(
    n=st.integers(0, 24),
    router=st.sampled_from(ROUTERS),
    widths=st.sampled_from([(8, 8), (8, 12), (12, 4)]),
    rank=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 2**16),
)
def test_grouped_equals_loop(n, router, widths, rank, seed) -> None:
    d_in, d_out = widths
    torch.manual_seed(seed)
    route = make_router(router)
    experts = LoRAExperts(d_in, d_out, 4, rank, alpha=2 * rank)
    nn.init.normal_(experts.B)
    x = torch.randn(n, d_in, requires_grad=True)
    logits = torch.randn(n, 4 + route.extra_logits, requires_grad=True)
    results = []
    for path in (grouped, loop):
        for t in (x, logits, *experts.parameters()):
            t.grad = None
        routing = route(logits * 2)
        y = path(x, routing, experts)
        assert y.shape == (n, d_out)
        (y * torch.linspace(-1, 1, d_out)).sum().backward()
        grads = [t.grad.clone() if t.grad is not None else torch.zeros_like(t)
                 for t in (x, logits, experts.A, experts.B)]  # fmt: skip
        results.append((y.detach(), grads))
    (y0, g0), (y1, g1) = results
    torch.testing.assert_close(y0, y1, atol=1e-5, rtol=1e-5)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@settings(max_examples=15)
@given(n=st.integers(0, 20), router=st.sampled_from(ROUTERS), seed=st.integers(0, 2**16))
def test_smora_fused_and_composed_equal_loop(n, router, seed) -> None:
    torch.manual_seed(seed)
    route = make_router(router)
    experts = SMoRAExperts(8, 6, rank=4, alpha=4)
    nn.init.normal_(experts.B)
    x = torch.randn(n, 8)
    routing = route(torch.randn(n, 4 + route.extra_logits))
    ref = loop(x, routing, experts)
    torch.testing.assert_close(grouped(x, routing, experts), ref, atol=1e-5, rtol=1e-5)
    offs = routing.expert_counts().cumsum(0).to(torch.int32)
    rows = x.index_select(0, routing.token)
    composed = torch.zeros(n, 6).index_add(0, routing.token, experts(rows, offs) *
                                           routing.weight[:, None])  # fmt: skip
    torch.testing.assert_close(composed, ref, atol=1e-5, rtol=1e-5)


def test_smora_model_is_rank_wise_lora() -> None:
    model = tiny_hf("llama")
    add_lora_experts(model, ["q_proj"], rank=8, kind="smora", router="top_k", k=2)
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.experts, SMoRAExperts) and layer.num_experts == 8
    randomize_adapters(model)
    # every rank chosen with weight 1 = the dense LoRA B A (scale alpha / r)
    x = torch.randn(5, 32)
    dense = x @ layer.experts.delta_weight().t()
    routing = make_router("top_k:k=8,normalize=false")(torch.zeros(5, 8))
    ones = type(routing)(routing.token, routing.expert, torch.ones_like(routing.weight),
                         routing.probs, 8)  # fmt: skip
    torch.testing.assert_close(grouped(x, ones, layer.experts), dense, atol=1e-5, rtol=1e-5)


def test_layer_in_bf16_keeps_dtype() -> None:
    layer = LoRAMoELinear(nn.Linear(16, 8).to(torch.bfloat16), 2, rank=2, router="top_k", k=1)
    y = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and layer.experts.dtype == torch.bfloat16
