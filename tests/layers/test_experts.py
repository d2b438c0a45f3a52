"""Expert kinds through the seam: every registered kind, a test-only kind; checkpointing."""

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from dynroute.dispatch import dense, grouped, loop
from dynroute.layers import MoE
from dynroute.layers.experts import (
    EXPERT_KINDS,
    Experts,
    ExpertWeights,
    MixedExperts,
    MLPExperts,
    SwiGLUExperts,
    make_experts,
)
from dynroute.parallel import local_group, shard_experts
from dynroute.parallel.ddp import expert_parameter_names, full_state_dict
from dynroute.routing import top_k

D = 8
ROUTERS = [("top_k", {"k": 2}), ("top_p", {"p": 0.5}), ("expert_choice", {"capacity_factor": 1.0})]


def registered_kinds() -> dict[str, dict]:
    """A spec per example of every registered kind (the registry, not a hand list), by id."""
    EXPERT_KINDS.discover()
    return {
        f"{name}-{i}": {"name": name, **params}
        for name, cls in sorted(EXPERT_KINDS.items())
        for i, params in enumerate(cls.examples)
    }


KINDS = registered_kinds()


class ScaledIdentityExperts(Experts):
    """A kind defined only here, with ``forward`` only: expert e multiplies rows by s[e]."""

    def __init__(self, d_model: int, num_experts: int) -> None:
        super().__init__(num_experts, d_model)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, num_experts))

    def forward(self, rows, offsets):
        row = torch.arange(rows.shape[0], device=rows.device)
        expert = torch.searchsorted(offsets, row, right=True)
        return rows * self.scale[expert, None]


def mlp():
    return MLPExperts(D, 12, 4)


def mixed():
    # a big and a small SwiGLU FFN, plus MLP experts: 5 experts of 3 widths
    return MixedExperts([SwiGLUExperts(D, 32, 2), MLPExperts(D, 4, 2), SwiGLUExperts(D, 4, 1)])


def run(moe, x, dispatch):
    """Output and every gradient (x and all parameters) of one forward/backward."""
    moe = copy.deepcopy(moe)
    moe.dispatch = dispatch
    x = x.detach().clone().requires_grad_()
    y, aux = moe(x)
    ((y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum() + aux.loss).backward()
    return y, [x.grad] + [p.grad for p in moe.parameters()]


def assert_agree(moe, x, dispatches=(grouped,)):
    y_ref, g_ref = run(moe, x, loop)
    for dispatch in dispatches:
        y, g = run(moe, x, dispatch)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        for a, b in zip(g, g_ref, strict=True):
            if b is None:  # an expert part no token reached
                assert a is None or not a.any()
            else:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_built_in_kinds_are_registered():
    assert {"swiglu", "mlp", "mixed"} <= set(EXPERT_KINDS)
    assert EXPERT_KINDS["swiglu"] is SwiGLUExperts and EXPERT_KINDS["mixed"] is MixedExperts


@pytest.mark.parametrize("spec", KINDS.values(), ids=KINDS.keys())
@pytest.mark.parametrize(("router", "kwargs"), ROUTERS)
def test_every_registered_kind_agrees_with_loop_on_every_dispatch(spec, router, kwargs):
    moe = MoE(D, 16, 4, experts=spec, router=router, **kwargs)
    assert moe.experts.name == spec["name"] and moe.experts.num_experts == 4

    assert_agree(moe, torch.randn(13, D), (grouped, dense))


def test_a_kind_defined_only_here_agrees_with_loop():
    for router, kwargs in ROUTERS:
        assert_agree(MoE(D, experts=ScaledIdentityExperts(D, 3), router=router, **kwargs),
                     torch.randn(13, D), (grouped, dense))  # fmt: skip


@given(st.integers(0, 40), st.sampled_from(ROUTERS), st.sampled_from(list(KINDS.values())))
def test_registered_kinds_match_loop_property(n, router, spec):
    torch.manual_seed(n)
    name, kwargs = router
    assert_agree(MoE(D, 16, 4, experts=spec, router=name, **kwargs), torch.randn(n, D))


def test_a_spec_fills_the_layer_sizes_and_may_override_d_ff():
    torch.manual_seed(0)
    by_spec = make_experts("mlp:d_ff=12,activation=relu", d_model=D, d_ff=16, num_experts=4)
    torch.manual_seed(0)
    by_module = MLPExperts(D, 12, 4, torch.relu)
    assert by_spec.d_ff == 12 and by_spec.activation is torch.nn.functional.relu
    for (name, a), (_, b) in zip(
        by_spec.state_dict().items(), by_module.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    moe = MoE(D, 16, 4, experts="mlp:d_ff=12", router="top_k", k=1)
    assert (moe.experts.d_model, moe.experts.d_ff, moe.experts.num_experts) == (D, 12, 4)
    swiglu = make_experts("swiglu", d_model=D, d_ff=16, num_experts=3, layout="per_expert")
    assert swiglu.layout == "per_expert" and len(swiglu.gate_up) == 3


def test_bad_specs_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"unknown expert kind 'mpl'; known: .*mixed, mlp"):
        MoE(D, 16, 4, experts="mpl")
    with pytest.raises(TypeError, match=r"mlp: unknown argument\(s\) \['width'\]"):
        MoE(D, 16, 4, experts={"name": "mlp", "width": 3})
    with pytest.raises(TypeError, match="d_model comes from the model"):
        MoE(D, 16, 4, experts="mlp:d_model=4")
    with pytest.raises(ValueError, match="holds 3 experts, the layer has num_experts=4"):
        MoE(D, 16, 4, experts="mlp:num_experts=3")
    with pytest.raises(ValueError, match="the expert kind mlp has no layout"):
        MoE(D, 16, 4, experts="mlp", expert_layout="per_expert")
    with pytest.raises(ValueError, match="unknown activation 'relux'"):
        MoE(D, 16, 4, experts="mlp:activation=relux")
    with pytest.raises(ValueError, match="cannot share the 3 experts"):
        MoE(D, 16, 4, experts={"name": "mixed", "parts": ["swiglu:num_experts=1", "mlp", "mlp"]})
    parts = ["mlp:num_experts=2", "mlp:num_experts=3"]
    with pytest.raises(ValueError, match="the parts hold 5 experts"):
        MoE(D, 16, 4, experts={"name": "mixed", "parts": parts})


def test_mixed_parts_from_specs_share_the_layer_experts():
    spec = {"name": "mixed", "parts": [{"name": "swiglu", "d_ff": 32, "num_experts": 2}, "mlp"]}
    experts = MoE(D, 16, 8, experts=spec).experts
    widths = [(type(p).__name__, p.num_experts, p.d_ff) for p in experts.parts]
    assert widths == [("SwiGLUExperts", 2, 32), ("MLPExperts", 6, 16)]


def test_mixed_runs_each_part_on_its_slice_only():
    small, big = MLPExperts(D, 4, 1), SwiGLUExperts(D, 64, 1)
    experts = MixedExperts([small, big])
    rows = torch.randn(5, D)
    out = experts(rows, torch.tensor([2, 5], dtype=torch.int32))
    torch.testing.assert_close(out[:2], small.run_expert(rows[:2], 0))
    torch.testing.assert_close(out[2:], big.run_expert(rows[2:], 0))
    assert experts.part_of(1) == (1, 0) and experts.num_experts == 2


def test_mlp_float64_and_unaligned_widths_under_autograd():
    """grouped_mm cannot take these operands: the slice loop must still differentiate."""
    moe = MoE(6, experts=MLPExperts(6, 5, 3), router="top_k", k=2).double()
    assert_agree(moe, torch.randn(9, 6, dtype=torch.float64))


def test_mlp_has_no_fused_paths():
    x, r = torch.randn(4, D), top_k(torch.randn(4, 4), 2)
    with pytest.raises(ValueError, match="needs experts with a fused op"):
        grouped(x, r, mlp(), path="grouped_mm")
    assert grouped(x, r, mlp(), path="autograd").shape == (4, D)


def test_moe_checks_experts_fit():
    with pytest.raises(ValueError, match="experts hold 4 experts"):
        MoE(D, num_experts=5, experts=mlp())
    with pytest.raises(TypeError, match="give num_experts"):
        MoE(D)
    with pytest.raises(TypeError, match=r"swiglu: missing required argument\(s\) \['d_ff'\]"):
        MoE(D, num_experts=4)


@pytest.mark.parametrize("kind", [mlp, mixed])
def test_shard_copies_a_slice_of_experts(kind):
    experts = kind()
    part = experts.shard(1, 3)
    assert part.num_experts == 2
    rows = torch.randn(3, D)
    for e in (0, 1):
        torch.testing.assert_close(part.run_expert(rows, e), experts.run_expert(rows, e + 1))
    assert not any(
        p.data_ptr() == q.data_ptr() for p in part.parameters() for q in experts.parameters()
    )


def test_expert_parallel_shards_any_stacked_kind():
    torch.manual_seed(0)
    moe = MoE(D, experts=MLPExperts(D, 12, 2), router="top_k", k=1)
    x = torch.randn(6, D)
    with local_group():
        ep = shard_experts(copy.deepcopy(moe))
        torch.testing.assert_close(ep(x)[0], moe(x)[0])
        assert expert_parameter_names(ep) == ["experts.w1", "experts.w2"]
        assert torch.equal(full_state_dict(ep)["experts.w2"], moe.experts.w2)
        with pytest.raises(ValueError, match="MixedExperts is not stacked"):
            shard_experts(MoE(D, experts=mixed()))


# --- the fused SwiGLU op and autograd's saved tensors ----------------------------------


def swiglu_moe(router, kwargs):
    torch.manual_seed(0)
    return MoE(D, 16, 4, router=router, **kwargs)


@pytest.mark.parametrize(("router", "kwargs"), ROUTERS[:2])
def test_checkpoint_gives_the_same_gradients(router, kwargs):
    moe, x = swiglu_moe(router, kwargs), torch.randn(70, D)

    def grads(use_checkpoint):
        m, xx = copy.deepcopy(moe), x.clone().requires_grad_()
        if use_checkpoint:
            y, aux = torch.utils.checkpoint.checkpoint(m, xx, use_reentrant=False)
        else:
            y, aux = m(xx)
        ((y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum() + aux.loss).backward()
        return [xx.grad] + [p.grad for p in m.parameters()]

    for a, b in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_saved_tensor_hooks_see_the_projection_and_offload_works():
    moe, x = swiglu_moe("top_k", {"k": 2}), torch.randn(70, D, requires_grad=True)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t.clone()  # what a CPU offload does: backward gets a copy

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = moe(x)
    assert (140, 2 * 16) in shapes  # A = 70 tokens x 2 experts, [A, 2f]
    y.sum().backward()
    got = [x.grad] + [p.grad for p in moe.parameters()]
    x2 = x.detach().clone().requires_grad_()
    moe.zero_grad()
    moe(x2)[0].sum().backward()
    for a, b in zip(got, [x2.grad] + [p.grad for p in moe.parameters()], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("path", ["grouped_mm", "slices"])
def test_backward_twice_with_retain_graph(path):
    gate_up = torch.randn(4, D, 32, requires_grad=True)
    down = torch.randn(4, 16, D, requires_grad=True)
    x = torch.randn(20, D, requires_grad=True)
    logits = torch.randn(20, 4, requires_grad=True)
    y = grouped(x, top_k(logits, 2), ExpertWeights(gate_up, down), path=path)
    g = torch.randn_like(y)
    leaves = (x, logits, gate_up, down)
    y.backward(g, retain_graph=True)
    once = [t.grad.clone() for t in leaves]
    y.backward(g)
    for t, g1 in zip(leaves, once, strict=True):
        torch.testing.assert_close(t.grad, 2 * g1)
