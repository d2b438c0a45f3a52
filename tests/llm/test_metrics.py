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
