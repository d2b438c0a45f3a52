"""Segment cache hit rate (SCH) and segment routing performance (SRP) vs brute force."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dynroute.analysis import (
    cache_hit_rate,
    segment_accumulators,
    segment_routing_performance,
    window_counts,
)


def brute_force_sch(mask: torch.Tensor, s: int, c: int) -> float:
    """Per window: keep the C most-used experts; hits / uses over all windows."""
    hits = uses = 0
    b, t, _ = mask.shape
    for row in range(b):
        for start in range(t - s + 1):
            counts = mask[row, start : start + s].sum(0).tolist()
            hits += sum(sorted(counts, reverse=True)[:c])
            uses += sum(counts)
    return hits / uses if uses else math.nan


def brute_force_srp(mask: torch.Tensor, s: int) -> float:
    """Best F1 over a global threshold t of predicting each window's frequent experts."""
    b, t, _ = mask.shape
    windows = [mask[r, i : i + s] for r in range(b) for i in range(t - s + 1)]
    best = 0.0
    for thr in range(1, s + 1):
        tp = pred = real = 0
        for w in windows:
            counts = w.sum(0)
            chosen = counts >= thr
            tp += int((w & chosen).sum())
            pred += int(chosen.sum()) * s
            real += int(w.sum())
        best = max(best, 2 * tp / (pred + real))
    return best


def test_window_counts_hand_example():
    m = torch.tensor([[[1, 0], [1, 1], [0, 1], [0, 1]]], dtype=torch.bool)
    assert window_counts(m, 2)[0].tolist() == [[2, 1], [1, 2], [0, 2]]
    assert window_counts(m, 4)[0].tolist() == [[2, 3]]
    with pytest.raises(ValueError, match="segment"):
        window_counts(m, 5)


def test_sch_hand_example():
    # Windows of 2 over experts used [0], [0, 1], [1], [1]:
    # counts (2, 1), (1, 2), (0, 2) -> C = 1 keeps 2 + 2 + 2 = 6 of 8 uses.
    m = torch.tensor([[[1, 0], [1, 1], [0, 1], [0, 1]]], dtype=torch.bool)
    sorted_sum, hist = segment_accumulators(m, 2)
    assert sorted_sum.tolist() == [6, 2]
    assert hist.tolist() == [1, 2, 3]
    assert cache_hit_rate(sorted_sum, 1) == pytest.approx(6 / 8)
    assert cache_hit_rate(sorted_sum, 2) == 1.0


def test_perfectly_consistent_routing_has_full_hit_rate_and_f1():
    m = torch.zeros(2, 10, 4, dtype=torch.bool)
    m[..., 1] = True  # every token uses expert 1 only
    sorted_sum, hist = segment_accumulators(m, 5)
    assert cache_hit_rate(sorted_sum, 1) == 1.0
    srp = segment_routing_performance(hist, num_experts=4)
    # every threshold is perfect here; the smallest one is reported
    assert srp == {"f1": 1.0, "threshold": 1, "coverage": 1.0, "set_size": 1.0}


@given(
    st.integers(1, 3),
    st.integers(1, 9),
    st.integers(2, 5),
    st.integers(0, 10_000),
)
def test_sch_and_srp_match_brute_force(b, t, e, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, e, generator=g) < 0.4
    for s in {1, min(2, t), t}:
        sorted_sum, hist = segment_accumulators(mask, s)
        for c in range(1, e + 1):
            expected = brute_force_sch(mask, s, c)
            got = cache_hit_rate(sorted_sum, c)
            assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected)
        if mask.any():
            got = segment_routing_performance(hist, e)["f1"]
            assert got == pytest.approx(brute_force_srp(mask, s))


def test_accumulators_are_additive_over_batches():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 12, 6, generator=g) < 0.3
    whole = segment_accumulators(mask, 4)
    parts = [segment_accumulators(mask[i : i + 2], 4) for i in (0, 2)]
    assert torch.equal(whole[0], parts[0][0] + parts[1][0])
    assert torch.equal(whole[1], parts[0][1] + parts[1][1])
