"""Property tests of the routing functions' own rules (top-k, top-p, null experts, expert
choice) over their whole parameter ranges; what every router must do (float32,
differentiable weights, empty input, ...) is in test_every_router.py."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dynroute.routing import (
    expert_capacity,
    expert_choice,
    make_router,
    null_experts,
    top_k,
    top_p,
)
from routing_checks import check_invariants
from strategies import logits as logits_st


@given(logits_st(), st.data())
def test_top_k_invariants(logits, data):
    k = data.draw(st.integers(1, logits.shape[1]))
    normalize = data.draw(st.booleans())
    r = top_k(logits, k, normalize=normalize)
    check_invariants(r, logits.shape[0])
    assert torch.all(r.experts_per_token() == k)
    if logits.shape[0]:
        sums = r.dense_weights().sum(dim=1)
        if normalize:
            torch.testing.assert_close(sums, torch.ones_like(sums))
        else:
            assert torch.all(sums <= 1 + 1e-6)


@given(logits_st(), st.floats(0.01, 1.0), st.booleans())
def test_top_p_keeps_minimal_prefix(logits, p, normalize):
    r = top_p(logits, p, normalize=normalize)
    n, e = logits.shape
    check_invariants(r, n)
    counts = r.experts_per_token()
    assert torch.all(counts >= 1)
    probs = torch.softmax(logits.float(), dim=-1)
    mask = torch.zeros(n, e, dtype=torch.bool)
    mask[r.token, r.expert] = True
    for t in range(n):
        sel = probs[t][mask[t]]
        rest = probs[t][~mask[t]]
        # kept experts are the most probable ones
        if rest.numel():
            assert sel.min() >= rest.max()
        # the prefix crosses p (unless every expert is kept) ...
        sorted_sel = torch.sort(sel, descending=True).values
        cum = torch.cumsum(torch.sort(probs[t], descending=True).values, 0)
        if int(counts[t]) < e:
            assert cum[counts[t] - 1] > p
        # ... and is minimal: dropping its last expert leaves mass <= p (at p = 1 every
        # expert is kept by definition, though the cumsum may round past 1 earlier)
        if int(counts[t]) > 1 and p < 1.0:
            assert cum[counts[t] - 2] <= p
        if normalize:
            torch.testing.assert_close(r.dense_weights()[t].sum(), torch.tensor(1.0))
        else:
            torch.testing.assert_close(
                torch.sort(r.dense_weights()[t][mask[t]], descending=True).values, sorted_sel
            )


@given(logits_st(min_experts=2), st.data())
def test_top_p_max_experts_caps(logits, data):
    cap = data.draw(st.integers(1, logits.shape[1]))
    r = top_p(logits, 1.0, max_experts=cap)
    check_invariants(r, logits.shape[0])
    assert torch.all(r.experts_per_token() == cap)


def test_top_p_p_one_keeps_everything():
    r = top_p(torch.randn(7, 5), 1.0)
    assert torch.all(r.experts_per_token() == 5)


def test_top_p_uses_fewer_experts_on_peaked_logits():
    torch.manual_seed(1)
    base = torch.randn(256, 16)
    flat = top_p(base * 0.1, 0.4).mean_experts()
    peaked = top_p(base * 5.0, 0.4).mean_experts()
    assert peaked < flat
    assert peaked < 2.0 < flat


@given(logits_st(min_experts=2), st.data())
def test_null_experts_invariants(logits, data):
    total = logits.shape[1]
    m = data.draw(st.integers(1, total - 1))
    k = data.draw(st.integers(1, total))
    r = null_experts(logits, k, m)
    n = logits.shape[0]
    check_invariants(r, n)
    assert r.num_experts == total - m
    counts = r.experts_per_token()
    assert torch.all(counts <= k) and torch.all(counts >= max(0, k - m))
    assert torch.equal(counts + r.null_selected, torch.full((n,), k))
    assert r.null_probs is not None and r.null_probs.shape == (n, m)
    sums = r.dense_weights().sum(dim=1)
    has = counts > 0
    torch.testing.assert_close(sums[has], torch.ones_like(sums[has]))
    assert torch.all(sums[~has] == 0)


def test_null_experts_matches_reference_topk():
    logits = torch.randn(64, 10)
    r = null_experts(logits, k=3, num_null=4)
    probs = torch.softmax(logits, -1)
    w, i = probs.topk(3, -1)
    for t in range(64):
        real = i[t] < 6
        expect = dict(
            zip(i[t][real].tolist(), (w[t][real] / w[t][real].sum()).tolist(), strict=True)
        )
        got = {
            int(e): float(x)
            for e, x in zip(r.expert[r.token == t], r.weight[r.token == t], strict=True)
        }
        assert got.keys() == expect.keys()
        for key in got:
            assert abs(got[key] - expect[key]) < 1e-6


@given(logits_st(), st.floats(0.1, 4.0))
def test_expert_choice_invariants(logits, cf):
    r = expert_choice(logits, cf)
    n, e = logits.shape
    check_invariants(r, n)
    c = expert_capacity(n, e, cf)
    assert torch.all(r.expert_counts() == c)
    probs = torch.softmax(logits, -1)
    for ex in range(e):
        chosen = r.token[r.expert == ex]
        others = torch.ones(n, dtype=torch.bool)
        others[chosen] = False
        if chosen.numel() and others.any():
            assert probs[chosen, ex].min() >= probs[others, ex].max()


def test_expert_choice_can_give_zero_or_many_experts():
    logits = torch.zeros(8, 4)
    logits[1:, 0] = 10.0  # tokens 1..7 lean to expert 0, so token 0 is the others' favourite
    r = expert_choice(logits, capacity_factor=1.0)
    counts = r.experts_per_token()
    assert int(counts[0]) == 3 and int((counts == 0).sum()) > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_raise(bad):
    logits = torch.zeros(3, 4)
    logits[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        top_p(logits, 0.4)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan")])
def test_top_p_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"top_p: p must be in \(0, 1\], got"):
        top_p(torch.zeros(2, 4), p)


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="k must be in"):
        top_k(torch.zeros(2, 4), 5)
    with pytest.raises(ValueError, match="shape \\[N, E\\]"):
        top_k(torch.zeros(2, 3, 4), 1)
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_choice(torch.zeros(2, 4), 0.0)
    with pytest.raises(ValueError, match="num_null"):
        null_experts(torch.zeros(2, 4), 2, 4)
    with pytest.raises(ValueError, match="unknown router"):
        make_router("top_q")
    with pytest.raises(TypeError, match="unknown argument"):
        make_router("top_p", p=0.4, q=1)
    with pytest.raises(TypeError, match="missing required"):
        make_router("top_p")
