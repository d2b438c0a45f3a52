"""Statistics on hand-made inputs with known answers."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from analysis.helpers_analysis import make_routing
from dynroute.analysis import (
    binned_mean,
    capacity_drops,
    load_balance_stats,
    rankdata,
    router_entropy,
    routing_mask,
    spearman,
    spearman_from_table,
    token_id_consistency,
    top_tokens_per_expert,
)


def test_rankdata_averages_ties():
    assert rankdata([3.0, 1.0, 3.0, 2.0, 3.0]).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_spearman_without_ties_matches_the_d_squared_formula():
    # d = [-1, 1, -1, 1, 0]: rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)


def test_spearman_with_ties_hand_computed():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: cov 4.5, var 4.5 and 5 -> 3 / sqrt(10)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))


def test_spearman_is_nan_for_constant_input_and_checks_lengths():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2], [1, 2, 3])


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), min_size=2, max_size=60))
def test_spearman_from_table_equals_spearman_of_the_samples(samples):
    x = np.array([s[0] for s in samples])
    y = np.array([s[1] for s in samples])
    table = np.zeros((5, 4))
    np.add.at(table, (x, y), 1)
    expected = spearman(x, y)
    got = spearman_from_table(table)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_binned_mean_groups_by_quantile():
    # x bins 0..3 hold 2, 2, 2, 2 samples with y in {1, 2}: two groups of 4.
    t = np.array([[2, 0], [1, 1], [0, 2], [0, 2]])
    ends, means, counts = binned_mean(t, np.array([1.0, 2.0]), 2)
    assert ends == [1, 3] and counts == [4, 4]
    assert means == pytest.approx([1.25, 2.0])


def test_load_balance_stats():
    assert load_balance_stats([1, 1, 1, 1]) == {"cv": 0.0, "max_over_mean": 1.0}
    out = load_balance_stats([3, 1, 0, 0])  # mean 1, std sqrt((4 + 0 + 1 + 1) / 4)
    assert out["cv"] == pytest.approx(math.sqrt(1.5))
    assert out["max_over_mean"] == 3.0


def test_routing_mask_and_entropy():
    r = make_routing([[0], [1, 2], []], num_experts=3)
    assert routing_mask(r).tolist() == [
        [True, False, False],
        [False, True, True],
        [False, False, False],
    ]
    h = router_entropy(r.probs)
    assert torch.allclose(h, torch.full((3,), math.log(3)))
    with_null = router_entropy(torch.tensor([[0.5, 0.0]]), torch.tensor([[0.5]]))
    assert with_null.item() == pytest.approx(math.log(2))


def test_capacity_drops_later_positions_first():
    # One sequence of 4 tokens, all on expert 0, one also on expert 1: 5 assignments,
    # capacity ceil(1.0 * 5 / 2) = 3, so tokens 3 (and nothing else) lose expert 0.
    m = torch.zeros(1, 4, 2, dtype=torch.bool)
    m[0, :, 0] = True
    m[0, 0, 1] = True
    d = capacity_drops(m, 1.0)
    assert d[0, :, 0].tolist() == [False, False, False, True]
    assert not d[0, :, 1].any()
    assert not capacity_drops(m, 2.0).any()
    with pytest.raises(ValueError, match="capacity_factor"):
        capacity_drops(m, 0.0)


def test_capacity_drops_groups_are_rows():
    m = torch.zeros(2, 2, 1, dtype=torch.bool)
    m[0] = True  # row 0: 2 assignments, capacity ceil(0.5 * 2) = 1
    m[1, 0] = True  # row 1: 1 assignment, capacity 1
    assert capacity_drops(m, 0.5)[..., 0].tolist() == [[False, True], [False, False]]


def test_token_id_consistency_known_answer():
    # token 0: 6 times, 4 to expert 2, 2 to expert 0; token 1: 3 times, all to expert 1;
    # token 2: once (excluded by min_count=2).
    token = torch.tensor([0, 0, 1, 2])
    expert = torch.tensor([0, 2, 1, 3])
    count = torch.tensor([2, 4, 3, 1])
    occ = torch.tensor([6, 3, 1])
    share, used = token_id_consistency(token, expert, count, occ, min_count=2)
    assert used == 2 and share == pytest.approx((4 + 3) / (6 + 3))
    assert math.isnan(token_id_consistency(token, expert, count, occ, min_count=10)[0])


def test_top_tokens_per_expert_known_answer():
    token = torch.tensor([0, 0, 1, 2, 1])
    expert = torch.tensor([0, 1, 1, 1, 0])
    count = torch.tensor([5, 1, 3, 1, 1])
    occ = torch.tensor([6, 4, 1])
    top = top_tokens_per_expert(token, expert, count, occ, num_experts=2, top=2, min_count=2)
    assert top[0] == [(0, 5, 5 / 6), (1, 1, 1 / 4)]
    assert top[1] == [(1, 3, 3 / 4), (0, 1, 1 / 6)]  # token 2 is too rare
