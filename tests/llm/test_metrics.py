"""Metrics against hand-computed tiny cases."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynroute.llm.metrics import aiq, apgr_cpt, cost_at_quality, upper_hull, zero_router


def test_hull_drops_points_below_and_after_the_peak():
    pts = [(0.0, 0.2), (0.2, 0.3), (0.5, 0.8), (0.7, 0.7), (1.0, 0.8)]
    # (0.2, 0.3) lies below the chord (0, .2)-(.5, .8); after the peak nothing counts.
    assert upper_hull(pts).tolist() == [[0.0, 0.2], [0.5, 0.8]]


def test_aiq_hand_computed():
    # Hull (0, .2) -> (.5, .8), flat to 1: area .5*(.2+.8)/2 + .5*.8 = .25 + .4 = .65
    assert aiq([(0.0, 0.2), (0.5, 0.8), (1.0, 0.8)]) == pytest.approx(0.65)
    # Costs normalise by max_cost; the area starts at the cheapest point (RouterBench).
    assert aiq([(1.0, 0.5), (2.0, 1.0)], max_cost=4.0) == pytest.approx((1 * 0.75 + 2 * 1.0) / 4)
    # A single point.
    assert aiq([(2.0, 0.6)], max_cost=4.0) == pytest.approx(0.3)
    # A hull beyond max_cost is cut there.
    assert aiq([(0.0, 0.0), (2.0, 1.0)], max_cost=1.0) == pytest.approx(0.25)


def test_zero_router_is_hull_of_singles():
    h = zero_router([1.0, 2.0, 10.0], [0.5, 0.9, 0.8])
    assert h.tolist() == [[1.0, 0.5], [2.0, 0.9]]


def test_cost_at_quality():
    pts = [(1.0, 0.5), (3.0, 0.9)]
    assert cost_at_quality(pts, 0.7) == pytest.approx(2.0)
    assert cost_at_quality(pts, 0.4) == 1.0
    assert cost_at_quality(pts, 0.95) is None


def test_apgr_cpt_hand_computed():
    weak = np.array([0.0, 0.0, 1.0, 0.0])
    strong = np.array([1.0, 1.0, 1.0, 0.0])
    # Perfect order: the two queries strong fixes first. Quality after k strong calls:
    # .25, .5, .75, .75, .75 -> PGR 0, .5, 1, 1, 1; trapezoids of width .25 -> .75.
    r = apgr_cpt(np.array([3.0, 2.0, 1.0, 0.0]), weak, strong)
    assert r["apgr"] == pytest.approx(0.75)
    assert r["cpt50"] == 0.25 and r["cpt80"] == 0.5
    # Worst order first: PGR 0, 0, 0, .5, 1.
    r = apgr_cpt(np.array([0.0, 1.0, 2.0, 3.0]), weak, strong)
    assert r["apgr"] == pytest.approx(0.25 * (0 + 0 + 0.25 + 0.75))
    assert r["cpt50"] == 0.75 and r["cpt80"] == 1.0


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 1)), min_size=1, max_size=30))
def test_hull_properties(points):
    h = upper_hull(points)
    assert (np.diff(h[:, 0]) > 0).all() and (np.diff(h[:, 1]) >= -1e-12).all()
    p = np.array(points)
    # Every point lies on or below the hull (within its cost range) ...
    inside = p[(p[:, 0] >= h[0, 0]) & (p[:, 0] <= h[-1, 0])]
    assert (inside[:, 1] <= np.interp(inside[:, 0], h[:, 0], h[:, 1]) + 1e-9).all()
    # ... AIQ lies within the quality range, and adding points never lowers it.
    cmax = float(p[:, 0].max()) + 1.0
    a = aiq(points, cmax)
    assert 0.0 <= a <= p[:, 1].max() + 1e-9
    assert aiq([*points, (cmax / 2, 1.0)], cmax) >= a - 1e-12


def _apgr_cpt_by_threshold(score, weak, strong):
    """Reference without ties: route the k highest scores to strong, for every k."""
    q = len(score)
    gap = strong.mean() - weak.mean()
    order = sorted(range(q), key=lambda i: -score[i])
    pgr = []
    for k in range(q + 1):
        chosen = np.where(np.isin(np.arange(q), order[:k]), strong, weak)
        pgr.append((chosen.mean() - weak.mean()) / gap)
    apgr = sum((pgr[k] + pgr[k + 1]) / 2 / q for k in range(q))
    cpt = {x: next((k / q for k in range(q + 1) if pgr[k] >= x - 1e-12), 1.0) for x in (0.5, 0.8)}
    return apgr, cpt


_outcomes = st.lists(
    st.tuples(st.integers(0, 3), st.booleans(), st.booleans()), min_size=2, max_size=30
)


@given(_outcomes, st.randoms(use_true_random=False))
def test_apgr_cpt_do_not_depend_on_row_order(rows, rnd):
    # Scores from a few values: tie groups everywhere (RouteLLM breaks them by row order).
    score, weak, strong = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
    if abs(strong.mean() - weak.mean()) < 1e-9:
        return
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    a = apgr_cpt(score, weak, strong)
    b = apgr_cpt(score[perm], weak[perm], strong[perm])
    assert a == pytest.approx(b, abs=1e-12)


@given(_outcomes)
def test_apgr_cpt_without_ties_equal_every_threshold(rows):
    _, weak, strong = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
    if abs(strong.mean() - weak.mean()) < 1e-9:
        return
    score = np.arange(len(rows), dtype=float)[::-1] * 0.5  # distinct scores
    apgr, cpt = _apgr_cpt_by_threshold(score, weak, strong)
    r = apgr_cpt(score, weak, strong)
    assert r["apgr"] == pytest.approx(apgr, abs=1e-12)
    assert (r["cpt50"], r["cpt80"]) == (cpt[0.5], cpt[0.8])


def test_a_tie_group_moves_together():
    # Two tied queries, only the second gains: either order gives the mean of both orders.
    weak, strong = np.array([0.0, 0.0]), np.array([0.0, 1.0])
    r = apgr_cpt(np.array([1.0, 1.0]), weak, strong)
    assert r["apgr"] == pytest.approx(0.5)  # PGR 0 → .5 → 1, not 0 → 0 → 1 or 0 → 1 → 1
    assert r["cpt50"] == 0.5 and r["cpt80"] == 1.0
