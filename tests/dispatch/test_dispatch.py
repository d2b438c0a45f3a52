"""grouped, loop and dense agree in outputs and in every gradient, for every registered
router (each example of ``Router.examples``)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dispatch_cases import ROUTERS, D, E, make_case
from dynroute.dispatch import (
    dense,
    grouped,
    grouped_linear,
    grouped_outer,
    loop,
)
from dynroute.dispatch.combine import Combiner
from dynroute.layers.experts import ExpertWeights, choose_path
from dynroute.layers.experts.swiglu_fused import SMALL_FORWARD
from dynroute.routing import Routing, top_k, top_p

#: the case the dtype and path tests below use
TOP_P = "top_p:p=0.5"


def run(dispatch, n, router, seed=0, dtype=torch.float32):
    x, gate, gate_up, down = make_case(n, router, seed, dtype)
    routing = ROUTERS[router](x @ gate)
    y = dispatch(x, routing, ExpertWeights(gate_up, down))
    g = torch.Generator().manual_seed(seed + 1)
    (y * torch.randn(y.shape, generator=g, dtype=dtype)).sum().backward()
    return y, routing, [t.grad for t in (x, gate, gate_up, down)]


@pytest.mark.parametrize("router", list(ROUTERS))
@pytest.mark.parametrize("n", [0, 1, 5, 37])
def test_grouped_loop_dense_agree(router, n):
    y_ref, _, grads_ref = run(loop, n, router)
    for fn in (grouped, dense):
        y, _, grads = run(fn, n, router)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        for got, want in zip(grads, grads_ref, strict=True):
            if want is None:
                assert got is None or torch.all(got == 0)
            else:
                assert got is not None
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cases_cover_empty_experts_and_tokens():
    """The agreement test above includes tokens with 0 experts and experts with 0 tokens."""
    some_empty = [run(loop, 37, case)[1].experts_per_token() for case in ROUTERS]
    assert any(bool((c == 0).any() and (c > 0).any()) for c in some_empty)
    assert any(bool((run(loop, 5, case)[1].expert_counts() == 0).any()) for case in ROUTERS)


@given(st.integers(0, 40), st.sampled_from(list(ROUTERS)), st.integers(0, 10_000))
def test_grouped_matches_loop_property(n, router, seed):
    y_ref, _, _ = run(loop, n, router, seed)
    y, _, _ = run(grouped, n, router, seed)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


def test_hand_computed_output():
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    gate_up = torch.zeros(2, 8, 4)
    gate_up[1, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # gate=[1,2], up=[3,4]
    down = torch.zeros(2, 2, 8)
    down[1] = 1.0
    r = Routing(torch.tensor([0]), torch.tensor([1]), torch.tensor([0.5]), torch.zeros(1, 2), 2)
    silu = torch.nn.functional.silu
    expected = 0.5 * (silu(torch.tensor(1.0)) * 3 + silu(torch.tensor(2.0)) * 4)
    for fn in (grouped, loop, dense):
        y = fn(x, r, ExpertWeights(gate_up, down))
        torch.testing.assert_close(y, torch.full((1, 8), expected.item()))


@pytest.mark.parametrize("fn", [grouped, loop, dense])
def test_bf16_and_float64(fn):
    for dtype in (torch.bfloat16, torch.float64):
        y, _, grads = run(fn, 9, TOP_P, dtype=dtype)
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    x, gate, gate_up, down = (t.detach() for t in make_case(9, TOP_P))
    r = top_p(x @ gate, 0.5)
    y16 = fn(x.bfloat16(), r, ExpertWeights(gate_up.bfloat16(), down.bfloat16()))
    y32 = loop(x, r, ExpertWeights(gate_up, down))
    torch.testing.assert_close(y16.float(), y32, atol=0.05, rtol=0.05)


def test_grouped_linear_falls_back_for_unaligned_sizes():
    x, w = torch.randn(7, 5), torch.randn(3, 5, 3)
    offs = torch.tensor([2, 2, 7], dtype=torch.int32)
    want = torch.cat([x[:2] @ w[0], x[2:7] @ w[2]])
    torch.testing.assert_close(grouped_linear(x, w, offs), want)


def test_grouped_linear_gradients_with_an_unaligned_output_width():
    """A 37-wide output is fine for grouped_mm's forward but not for its backward (the
    [A, 37] float32 gradient rows are 148 bytes): under autograd the slice loop runs, and
    the gradients equal per-expert products'."""
    torch.manual_seed(0)
    x = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(2, 8, 37, requires_grad=True)
    offs = torch.tensor([2, 5], dtype=torch.int32)
    grouped_linear(x, w, offs).square().sum().backward()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    torch.cat([xr[:2] @ wr[0], xr[2:] @ wr[1]]).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(w.grad, wr.grad)


def test_transposed_weight_views_are_accepted():
    """transformers stores [E, 2F, D]; a transposed view must work without a copy."""
    x, gate, gate_up, down = make_case(11, "top_k:k=2")
    r = top_k(x @ gate, 2)
    w_t = ExpertWeights(
        gate_up.detach().transpose(1, 2).contiguous().transpose(1, 2),
        down.detach().transpose(1, 2).contiguous().transpose(1, 2),
    )
    torch.testing.assert_close(grouped(x, r, w_t), loop(x, r, ExpertWeights(gate_up, down)))


def test_mismatched_shapes_raise():
    x, _, gate_up, down = make_case(4, "top_k:k=2")
    r = top_k(torch.randn(4, E + 1), 2)
    with pytest.raises(ValueError, match="routing is over 7 experts"):
        grouped(x, r, ExpertWeights(gate_up, down))
    with pytest.raises(ValueError, match="d_model"):
        loop(torch.randn(4, D + 1), top_k(torch.randn(4, E), 2), ExpertWeights(gate_up, down))


# --- execution paths -------------------------------------------------------------------

PATH_NAMES = ["grouped_mm", "slices", "autograd"]


@pytest.mark.parametrize("path", PATH_NAMES)
@pytest.mark.parametrize("router", list(ROUTERS))
def test_every_path_agrees_with_loop(path, router):
    y_ref, _, grads_ref = run(loop, 37, router)
    y, _, grads = run(lambda x, r, w: grouped(x, r, w, path=path), 37, router)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_auto_path_choice():
    x, _, gate_up, down = (t.detach() for t in make_case(4, "top_k:k=2"))
    w = ExpertWeights(gate_up, down)
    assert choose_path(x, w) == "grouped_mm"
    # d_ff = 12 floats = 48 bytes is aligned; an odd width is not
    odd = ExpertWeights(torch.randn(E, D, 2 * 5), torch.randn(E, 5, D))
    assert choose_path(x, odd) == "slices"
    assert choose_path(x.double(), ExpertWeights(gate_up.double(), down.double())) == "slices"
    assert choose_path(x, ExpertWeights(gate_up, down, torch.nn.functional.gelu)) == "autograd"
    assert choose_path(x, ExpertWeights(gate_up, down, torch.nn.SiLU())) == "grouped_mm"


def test_other_activation_matches_loop():
    x, gate, gate_up, down = make_case(20, TOP_P)
    r = top_p(x @ gate, 0.5)
    w = ExpertWeights(gate_up, down, torch.nn.functional.gelu)
    torch.testing.assert_close(grouped(x, r, w), loop(x, r, w), atol=1e-5, rtol=1e-5)


def test_bad_path_raises():
    x, gate, gate_up, down = make_case(4, "top_k:k=2")
    r = top_k(x @ gate, 2)
    with pytest.raises(ValueError, match="unknown path 'fast'"):
        grouped(x, r, ExpertWeights(gate_up, down), path="fast")
    with pytest.raises(ValueError, match="path='autograd'"):
        grouped(x, r, ExpertWeights(gate_up, down, torch.tanh), path="slices")
    with pytest.raises(ValueError, match="use path='slices'"):
        grouped(x.double(), r, ExpertWeights(gate_up.double(), down.double()), path="grouped_mm")


@pytest.mark.parametrize(
    "needs",
    [
        (True, False, False, False),
        (False, True, False, False),
        (False, False, True, True),
        (False, False, False, False),
    ],
)
def test_fused_backward_computes_only_requested_grads(needs):
    x, gate, gate_up, down = (t.detach() for t in make_case(23, TOP_P))
    r = top_p(x @ gate, 0.5)
    leaves = [x, r.weight, gate_up, down]
    for t, need in zip(leaves, needs, strict=True):
        t.requires_grad_(need)
    r = Routing(r.token, r.expert, leaves[1], r.probs, r.num_experts)
    y = grouped(x, r, ExpertWeights(gate_up, down), path="grouped_mm")
    y_ref = loop(x, r, ExpertWeights(gate_up, down))
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    if not any(needs):
        assert not y.requires_grad
        return
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [t for t in leaves if t.requires_grad], g)
    want = torch.autograd.grad(y_ref, [t for t in leaves if t.requires_grad], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_non_contiguous_grad_output():
    x, gate, gate_up, down = make_case(16, "top_k:k=2")
    r = top_k((x @ gate).detach(), 2)
    y = grouped(x, r, ExpertWeights(gate_up, down))
    g = torch.randn(D, 16).t()  # transposed: not contiguous
    (gx,) = torch.autograd.grad(y, [x], g)
    y_ref = loop(x, r, ExpertWeights(gate_up, down))
    (gx_ref,) = torch.autograd.grad(y_ref, [x], g)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)


def test_grouped_outer_matches_per_expert_products():
    a, b = torch.randn(9, 8), torch.randn(9, 4)
    offs = torch.tensor([3, 3, 9], dtype=torch.int32)
    want = torch.stack([a[:3].t() @ b[:3], torch.zeros(8, 4), a[3:].t() @ b[3:]])
    for use in (True, False):
        torch.testing.assert_close(grouped_outer(a, b, offs, use_grouped_mm=use), want)


def test_combiner_sparse_and_index_put_agree():
    token = torch.tensor([3, 0, 3, 1, 0])
    rows, scale = torch.randn(5, 4), torch.rand(5)
    want = torch.zeros(4, 4).index_add_(0, token, rows * scale[:, None])
    torch.testing.assert_close(Combiner(token, 4)(rows, scale), want)  # sparse (float32)
    got16 = Combiner(token, 4)(rows.bfloat16(), scale)  # index_put_ path
    torch.testing.assert_close(got16.float(), want, atol=0.05, rtol=0.05)
    assert Combiner(token, 5)(rows)[2].abs().sum() == 0  # token 2 and 4 get nothing


@pytest.mark.parametrize("n", [1, 3, 40])
def test_forward_only_small_calls_match_the_fused_path(n, monkeypatch):
    """Decoding-size forward-only calls skip the fused op; the result must not change."""
    import importlib

    # the package re-exports the function `grouped`, which shadows the module's name
    grouped_module = importlib.import_module("dynroute.dispatch.grouped")

    x, gate, gate_up, down = (t.detach() for t in make_case(n, TOP_P))
    r = top_p(x @ gate, 0.5)
    w = ExpertWeights(gate_up, down)
    taken = []
    composed = grouped_module._composed
    monkeypatch.setattr(grouped_module, "_composed", lambda *a: taken.append(True) or composed(*a))
    with torch.no_grad():
        y = grouped(x, r, w)
    assert bool(taken) == (r.num_assignments <= SMALL_FORWARD)
    torch.testing.assert_close(y, grouped(x, r, w, path="grouped_mm"), atol=1e-5, rtol=1e-5)
