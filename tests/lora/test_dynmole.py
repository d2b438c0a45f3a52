"""DynMoLE router: routing invariants, the soft/sparse rule, its entropy loss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dynroute.routing import make_router
from dynroute.routing.dynmole import DynMoLE, dynmole, dynmole_loss, tsallis_entropy
from dynroute.routing.top_p import top_p_mask
from routing.test_routers import check_invariants
from strategies import logits as logits_st


@given(
    logits_st(),
    st.floats(0.5, 2.0),
    st.floats(0.0, 1.0),
    st.floats(0.05, 1.0),
    st.integers(1, 4),
    st.booleans(),
)
def test_dynmole_rule_and_invariants(logits, q, threshold, p, k, normalize) -> None:
    r = dynmole(logits, q=q, threshold=threshold, p=p, k=k, normalize=normalize)
    n, e = logits.shape
    check_invariants(r, n)
    probs = torch.softmax(logits.float(), dim=-1)
    entropy = tsallis_entropy(probs, q)
    assert torch.all((entropy >= 0) & (entropy <= 1))
    mask = torch.zeros(n, e, dtype=torch.bool)
    mask[r.token, r.expert] = True
    counts = r.experts_per_token()
    for t in range(n):
        if entropy[t] > threshold:  # uncertain: every expert, soft weights = probabilities
            assert int(counts[t]) == e
        else:  # confident: top-p mask, at least min(k, E) experts, the most probable ones
            expected = top_p_mask(probs[t : t + 1], p)[0]
            assert torch.all(mask[t] >= expected)
            assert int(counts[t]) == max(int(expected.sum()), min(k, e))
            kept, rest = probs[t][mask[t]], probs[t][~mask[t]]
            if rest.numel():
                assert kept.min() >= rest.max() - 1e-7
    if normalize and n:
        sums = r.dense_weights().sum(dim=1)
        torch.testing.assert_close(sums, torch.ones_like(sums))


def test_weights_are_differentiable() -> None:
    logits = torch.randn(6, 4, requires_grad=True)
    dynmole(logits, threshold=0.5).weight.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("q", [0.5, 1.0, 1.1, 2.0])
def test_tsallis_normalisation(q: float) -> None:
    uniform = torch.full((1, 8), 1 / 8)
    one_hot = torch.eye(8)[:1]
    assert tsallis_entropy(uniform, q).item() == pytest.approx(1.0, abs=1e-5)
    assert tsallis_entropy(one_hot, q).item() == pytest.approx(0.0, abs=1e-6)
    raw = tsallis_entropy(uniform, q, normalized=False).item()
    top = math.log(8) if q == 1.0 else (1 - 8 ** (1 - q)) / (q - 1)
    assert raw == pytest.approx(top, rel=1e-5)
    assert tsallis_entropy(torch.ones(3, 1), q).tolist() == [0.0, 0.0, 0.0]


def test_loss_and_registry_round_trip() -> None:
    router = make_router("dynmole:q=1.2,threshold=0.7,k=2,entropy_weight=0.1")
    assert isinstance(router, DynMoLE) and make_router(router.to_dict()) == router
    logits = torch.randn(5, 4, requires_grad=True)
    r = router(logits)
    loss = router.aux_loss(r)
    assert loss.item() == pytest.approx(0.1 * dynmole_loss(r, 1.2).item())
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert dynmole_loss(router(torch.zeros(0, 4))).item() == 0.0


@pytest.mark.parametrize(
    "spec", ["dynmole:q=0", "dynmole:threshold=1.5", "dynmole:p=0", "dynmole:k=0"]
)
def test_bad_parameters_fail_when_built(spec: str) -> None:
    with pytest.raises((ValueError, TypeError), match="dynmole"):
        make_router(spec)
