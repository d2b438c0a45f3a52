"""The per-expert weight layout: same outputs and gradients as stacked, none for idle experts."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dispatch_cases import ROUTERS, make_case
from dynroute.dispatch import dense, grouped, loop
from dynroute.layers import MoE, SwiGLUExperts
from dynroute.layers.experts import ExpertWeights, choose_path
from dynroute.routing import make_router


def per_expert_leaves(gate_up, down):
    """Separate leaf tensors holding the same values as the stacked weights."""
    gus = tuple(w.detach().clone().requires_grad_() for w in gate_up)
    dns = tuple(w.detach().clone().requires_grad_() for w in down)
    return gus, dns


def run_both(n, router, seed=0, dispatch=grouped):
    x, gate, gate_up, down = make_case(n, router, seed)
    gus, dns = per_expert_leaves(gate_up, down)
    g = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(n, x.shape[1], generator=g)
    routing = ROUTERS[router](x @ gate)
    y_ref = loop(x, routing, ExpertWeights(gate_up, down))
    (y_ref * grad_out).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    gate2 = gate.detach().clone().requires_grad_()
    routing2 = ROUTERS[router](x2 @ gate2)
    y = dispatch(x2, routing2, ExpertWeights(gus, dns))
    (y * grad_out).sum().backward()
    return (x, gate, gate_up, down, y_ref), (x2, gate2, gus, dns, y), routing


@pytest.mark.parametrize("router", list(ROUTERS))
@pytest.mark.parametrize("n", [1, 5, 37])
def test_per_expert_matches_stacked_loop(router, n):
    (x, gate, gate_up, down, y_ref), (x2, gate2, gus, dns, y), routing = run_both(n, router)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gate2.grad, gate.grad, atol=1e-5, rtol=1e-5)
    counts = routing.expert_counts().tolist()
    for e, c in enumerate(counts):
        if c:
            torch.testing.assert_close(gus[e].grad, gate_up.grad[e], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(dns[e].grad, down.grad[e], atol=1e-5, rtol=1e-5)
        else:  # the point of the layout: an idle expert's weights get no gradient at all
            assert gus[e].grad is None and dns[e].grad is None


def test_idle_experts_are_covered():
    assert any(bool((run_both(1, case)[2].expert_counts() == 0).any()) for case in ROUTERS)


@given(st.integers(0, 30), st.sampled_from(list(ROUTERS)), st.integers(0, 10_000))
def test_per_expert_output_property(n, router, seed):
    (*_, y_ref), (*_, y), _ = run_both(n, router, seed)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dispatch", [loop, dense])
def test_reference_dispatches_take_per_expert_weights(dispatch):
    (*_, y_ref), (*_, y), _ = run_both(9, "top_p:p=0.5", dispatch=dispatch)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


def test_path_choice_and_errors():
    _, _, gate_up, down = make_case(3, "top_p:p=0.5")
    stacked = ExpertWeights(gate_up, down)
    split = ExpertWeights(*per_expert_leaves(gate_up, down))
    x = torch.randn(3, gate_up.shape[1])
    assert choose_path(x, split) == "per_expert" and choose_path(x, stacked) == "grouped_mm"
    assert split.stacked().gate_up.shape == gate_up.shape
    routing = make_router("top_p:p=0.5")(torch.randn(3, gate_up.shape[0]))
    with pytest.raises(ValueError, match="per-expert"):
        grouped(x, routing, split, path="grouped_mm")
    with pytest.raises(ValueError, match="stacked"):
        grouped(x, routing, stacked, path="per_expert")


def test_moe_layer_per_expert_layout_matches_stacked():
    torch.manual_seed(0)
    stacked = MoE(8, 12, 6, router="top_p", p=0.5)
    split = MoE(8, 12, 6, router="top_p", p=0.5, expert_layout="per_expert")
    split.gate.load_state_dict(stacked.gate.state_dict())
    with torch.no_grad():
        for e in range(6):
            split.experts.gate_up[e].copy_(stacked.experts.gate_up[e])
            split.experts.down[e].copy_(stacked.experts.down[e])
    x = torch.randn(2, 3, 8)
    (y1, _), (y2, a2) = stacked(x), split(x)
    torch.testing.assert_close(y2, y1, atol=1e-5, rtol=1e-5)
    (y2.sum() + a2.loss).backward()
    idle = a2.routing.expert_counts() == 0
    for e in range(6):
        assert (split.experts.gate_up[e].grad is None) == bool(idle[e])
    assert "layout=per_expert" in repr(split.experts)


def test_bad_layout_raises():
    with pytest.raises(ValueError, match="layout"):
        SwiGLUExperts(8, 12, 4, layout="sharded")
