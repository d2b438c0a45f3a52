"""Cost–quality metrics, defined as RouterBench and RouteLLM define them.

- :func:`upper_hull` / :func:`aiq`: RouterBench's AIQ, the area under the non-decreasing
  convex hull of a router's (cost, quality) points, extended flat to the largest cost,
  integrated from the hull's cheapest point and divided by the largest cost (costs
  normalised to [0, 1]).
- :func:`zero_router`: the hull of the single models — what mixing models at random
  achieves; a router must beat it.
- :func:`apgr_cpt`: RouteLLM's APGR (average performance gap recovered over the share of
  strong-model calls) and CPT(x) (share of strong calls needed to recover x of the gap),
  for two-model pools.
- :func:`cost_at_quality`: cheapest cost at which a hull reaches a quality, for "cost
  saved at the best single model's quality".

Example:
    >>> round(aiq([(0.0, 0.5), (1.0, 1.0)]), 3)   # a straight line from 0.5 to 1
    0.75
    >>> upper_hull([(0.0, 0.5), (0.5, 0.6), (1.0, 1.0)]).tolist()  # (0.5, 0.6) lies below
    [[0.0, 0.5], [1.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["aiq", "apgr_cpt", "cost_at_quality", "upper_hull", "zero_router"]

Points = Sequence[tuple[float, float]] | np.ndarray


def upper_hull(points: Points) -> np.ndarray:
    """Non-decreasing upper convex hull of ``[n, 2]`` (cost, quality) points -> ``[h, 2]``.

    Points are the vertices of the concave upper envelope, sorted by cost, cut after the
    highest quality (beyond it, paying more buys nothing: RouterBench's non-decreasing
    part). At one cost only the best quality counts.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(p) == 0:
        raise ValueError("upper_hull needs at least one point")
    p = p[np.lexsort((-p[:, 1], p[:, 0]))]  # by cost, best quality first at equal cost
    p = p[np.concatenate([[True], np.diff(p[:, 0]) > 0])]
    hull: list[np.ndarray] = []
    for pt in p:  # Andrew's monotone chain, upper half
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # Drop the middle point when it is on or below the chord to the new point.
            if (x2 - x1) * (pt[1] - y1) - (y2 - y1) * (pt[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(pt)
    h = np.array(hull)
    return h[: int(np.argmax(h[:, 1])) + 1]


def aiq(points: Points, max_cost: float | None = None) -> float:
    """Average improvement in quality: area under the hull over ``[0, max_cost]`` / max_cost.

    ``max_cost`` defaults to the largest cost among ``points``; compare routers with one
    shared ``max_cost`` (RouterBench: the largest cost of all compared routers). Hull
    parts beyond ``max_cost`` are cut there; the area starts at the hull's cheapest point.

    Example:
        >>> aiq([(0.5, 1.0)], max_cost=1.0)  # from cost 0.5 to 1 at quality 1
        0.5
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h = upper_hull(p)
    cmax = float(p[:, 0].max()) if max_cost is None else float(max_cost)
    if cmax <= 0:
        return float(h[:, 1].max())  # everything free: the area degenerates to the quality
    if h[-1, 0] > cmax:  # cut at cmax, interpolating the hull there
        inside = h[h[:, 0] < cmax]
        y = float(np.interp(cmax, h[:, 0], h[:, 1]))
        h = np.vstack([inside, [[cmax, y]]]) if len(inside) else np.array([[cmax, y]])
    h = np.vstack([h, [[cmax, h[-1, 1]]]])  # flat after the last hull point
    area = float(np.sum(np.diff(h[:, 0]) * (h[1:, 1] + h[:-1, 1]) / 2.0))
    return area / cmax


def zero_router(costs: Sequence[float], qualities: Sequence[float]) -> np.ndarray:
    """Hull ``[h, 2]`` of the single models' (mean cost, mean quality) points."""
    return upper_hull(np.column_stack([costs, qualities]))


def cost_at_quality(points: Points, quality: float) -> float | None:
    """Least cost at which the hull of ``points`` reaches ``quality`` (None if never).

    Example:
        >>> cost_at_quality([(0.0, 0.5), (1.0, 1.0)], 0.75)
        0.5
    """
    h = upper_hull(points)
    if h[-1, 1] < quality - 1e-12:
        return None
    if h[0, 1] >= quality:
        return float(h[0, 0])
    i = int(np.argmax(h[:, 1] >= quality - 1e-12))
    (x1, y1), (x2, y2) = h[i - 1], h[i]
    return float(x1 + (quality - y1) * (x2 - x1) / (y2 - y1))


def apgr_cpt(
    score: np.ndarray,
    quality_weak: np.ndarray,
    quality_strong: np.ndarray,
    levels: Sequence[float] = (0.5, 0.8),
) -> dict[str, float]:
    """RouteLLM's APGR and CPT for a two-model pool.

    Args:
        score: ``[Q]`` the router's preference for the strong model (higher: call strong).
            Calls are routed to strong in order of decreasing score, so every share of
            strong calls k/Q from 0 to 1 is one threshold. Queries of equal score move
            together: inside a tie group the curve is interpolated (the mean over orders),
            so reordering the rows never changes the result. RouteLLM breaks ties by row
            order; without ties the two agree.
        quality_weak, quality_strong: ``[Q]`` each model's quality on each query.
        levels: the x of CPT(x), shares of the quality gap.

    Returns:
        ``{"apgr", "cpt50", "cpt80", ...}``: APGR = area under PGR(share) with
        PGR = (quality − weak) / (strong − weak); CPT(x) = least share of strong calls
        with PGR ≥ x (as a fraction; 1.0 if never reached before all calls are strong).

    Example:
        >>> r = apgr_cpt(np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0]))
        >>> r["apgr"], r["cpt50"]
        (0.75, 0.5)
        >>> tied = apgr_cpt(np.zeros(2), np.array([0.0, 1.0]), np.array([1.0, 1.0]))
        >>> tied["apgr"], tied["cpt50"]  # either order of the two rows gives this
        (0.5, 0.5)
    """
    q = len(score)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    gain = (np.asarray(quality_strong) - np.asarray(quality_weak))[order]
    weak, strong = float(np.mean(quality_weak)), float(np.mean(quality_strong))
    # A threshold cannot split queries of equal score: a tie group moves to the strong
    # model together. Between group ends the curve is the straight line a random order
    # inside the group gives on average, so the result never depends on row order.
    ends = np.concatenate([[0], np.nonzero(np.diff(s[order]))[0] + 1, [q]])
    gained = np.concatenate([[0.0], np.cumsum(gain)])[ends]
    quality = weak + np.interp(np.arange(q + 1), ends, gained) / q  # after k strong calls
    share = np.arange(q + 1) / q
    gap = strong - weak
    if abs(gap) < 1e-12:
        return {"apgr": float("nan"), **{f"cpt{round(x * 100)}": float("nan") for x in levels}}
    pgr = (quality - weak) / gap
    out = {"apgr": float(np.sum(np.diff(share) * (pgr[1:] + pgr[:-1]) / 2.0))}
    for x in levels:
        hit = np.nonzero(pgr >= x - 1e-12)[0]
        out[f"cpt{round(x * 100)}"] = float(share[hit[0]]) if len(hit) else 1.0
    return out
