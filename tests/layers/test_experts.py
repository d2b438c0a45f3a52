"""Expert kinds through the seam: MLP, mixed widths, a test-only kind; checkpointing."""

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from dynroute.dispatch import dense, grouped, loop
from dynroute.layers import MoE
from dynroute.layers.experts import Experts, ExpertWeights, MixedExperts, MLPExperts, SwiGLUExperts
from dynroute.parallel import local_group, shard_experts
from dynroute.parallel.ddp import expert_parameter_names, full_state_dict
from dynroute.routing import top_k

D = 8
ROUTERS = [("top_k", {"k": 2}), ("top_p", {"p": 0.5}), ("expert_choice", {"capacity_factor": 1.0})]


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


def scaled():
    return ScaledIdentityExperts(D, 3)


KINDS = {"mlp": mlp, "mixed": mixed, "scaled": scaled}


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


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("router", "kwargs"), ROUTERS)
def test_kinds_agree_with_loop_on_every_dispatch(kind, router, kwargs):
    moe = MoE(D, experts=KINDS[kind](), router=router, **kwargs)

    assert_agree(moe, torch.randn(13, D), (grouped, dense))


@given(st.integers(0, 40), st.sampled_from(ROUTERS), st.sampled_from(["mlp", "mixed"]))
def test_kinds_match_loop_property(n, router, kind):
    torch.manual_seed(n)
    name, kwargs = router
    assert_agree(MoE(D, experts=KINDS[kind](), router=name, **kwargs), torch.randn(n, D))


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
    with pytest.raises(TypeError, match="give d_ff and num_experts"):
        MoE(D)


@pytest.mark.parametrize("kind", ["mlp", "mixed"])
def test_shard_copies_a_slice_of_experts(kind):
    experts = KINDS[kind]()
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
