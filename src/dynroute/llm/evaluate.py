"""Evaluate query routers on a test table: cost–quality points, AIQ and the baselines.

All AIQs of one evaluation share one normalising cost: the mean cost of the most
expensive single model on the test table (what "always call the biggest model" costs).
Routers that pick one model per query never spend more; a cascade that does is cut off
there.

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> t = OutcomeTable.from_rows(["a", "b"], ["small", "big"], [[0, 1], [1, 1]],
    ...                            [[1, 2], [1, 2]])
    >>> r = evaluate(["oracle"], t, t)
    >>> r["baselines"]["oracle"]["quality"], r["routers"][0]["aiq"]
    (1.0, 0.4375)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dynroute.llm.data import OutcomeTable
from dynroute.llm.embed import Embedder, embedder_label, make_embedder
from dynroute.llm.metrics import aiq, apgr_cpt, cost_at_quality, zero_router
from dynroute.llm.routers import QueryRouter, make_query_router

__all__ = ["baselines", "evaluate", "evaluate_router"]


def _num(x: float | None) -> float | None:
    """JSON-safe number: ∞ and NaN become null."""
    return None if x is None or not math.isfinite(x) else float(x)


def _best_single(test: OutcomeTable) -> tuple[str, float, float]:
    # Highest quality; among equals the cheapest.
    return max(test.single_model_points(), key=lambda p: (p[2], -p[1]))


def baselines(test: OutcomeTable) -> dict[str, Any]:
    """Single models, the zero router (their hull) and the oracle on ``test``."""
    points = test.single_model_points()
    max_cost = max(c for _, c, _ in points)
    hull = zero_router([c for _, c, _ in points], [q for _, _, q in points])
    oracle = make_query_router("oracle").fit(test)
    opts = oracle.sweep(test)
    best = _best_single(test)
    return {
        "max_cost": max_cost,
        "single_models": [{"model": m, "cost": c, "quality": q} for m, c, q in points],
        "best_single": {"model": best[0], "cost": best[1], "quality": best[2]},
        "zero_router": {
            "aiq": aiq(hull, max_cost),
            "points": [{"cost": float(c), "quality": float(q)} for c, q in hull],
        },
        "oracle": {
            "aiq": aiq([(p["cost"], p["quality"]) for p in opts], max_cost),
            "quality": float(test.quality.max(1).mean()),
            "cost": opts[0]["cost"],  # λ = 0: best answer, cheapest among equals
        },
    }


def evaluate_router(
    router: QueryRouter, test: OutcomeTable, base: dict[str, Any]
) -> dict[str, Any]:
    """Points, AIQ, oracle gap, cost saved at the best single model's quality and (two
    models) APGR/CPT of a fitted ``router`` on ``test``."""
    test = test.aligned_to(router.models)
    t0 = time.perf_counter()
    pts = router.sweep(test)
    seconds = time.perf_counter() - t0
    xy = [(p["cost"], p["quality"]) for p in pts]
    score = aiq(xy, base["max_cost"])
    best = base["best_single"]
    at = cost_at_quality(xy, best["quality"])
    out: dict[str, Any] = {
        "router": router.name,
        "params": router.params(),
        "knob": router.knob,
        "aiq": score,
        "oracle_gap": base["oracle"]["aiq"] - score,
        "beats_zero_router": score > base["zero_router"]["aiq"] + 1e-9,
        "best_quality": max(q for _, q in xy),
        "cost_saved_at_best_single": None if at is None else 1.0 - at / best["cost"],
        "eval_seconds": seconds,
        "points": [
            {"lambda": _num(p["lambda"]), "cost": p["cost"], "quality": p["quality"]} for p in pts
        ],
    }
    if test.num_models == 2:  # RouteLLM's metrics: strong = the dearer model
        strong = int(np.argmax(test.cost.mean(0)))
        weak = 1 - strong
        pred = router.predict_table(test).double().numpy()
        res = apgr_cpt(
            pred[:, strong] - pred[:, weak], test.quality[:, weak], test.quality[:, strong]
        )
        out.update({k: _num(v) for k, v in res.items()})
    return out


def evaluate(
    names: Sequence[str | Mapping[str, Any]],
    train: OutcomeTable,
    test: OutcomeTable,
    *,
    seed: int = 0,
    embedder: Embedder | str | None = None,
    on_step: Callable[[str], None] | None = None,
    on_router: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Fit each query router in ``names`` (``"name"``, ``"name:k=v"`` or a dict spec, see
    :func:`~dynroute.llm.routers.make_query_router`) on ``train`` and evaluate on
    ``test``. One embedder (an :class:`~dynroute.llm.embed.Embedder`, fitted; or a name
    such as ``"wordllama"`` or ``"tfidf_svd+wordllama"``, fitted here; default
    ``tfidf_svd``) is shared by every router.

    Progress: ``on_step(stage)`` before each stage (``"embedding 40 training queries"``,
    ``"fitting knn"``, ``"scoring knn"``, ...); ``on_router(result)`` when a router is scored,
    with its entry of ``"routers"``.

    Example:
        >>> from dynroute.llm.data import OutcomeTable
        >>> t = OutcomeTable.from_rows(["a", "b"], ["small", "big"], [[0, 1], [1, 1]],
        ...                            [[1, 2], [1, 2]])
        >>> r = evaluate(["best_single"], t, t, on_step=print)
        scoring the single models and the oracle
        fitting best_single
        scoring best_single
    """
    step = on_step or (lambda stage: None)
    test = test.aligned_to(train.models)
    routers = [make_query_router(n) for n in names]
    for r in routers:
        r.seed = seed if r.seed == 0 else r.seed
    # the tables and specs are checked: from here on, the slow part
    step("scoring the single models and the oracle")
    base = baselines(test)
    if not isinstance(embedder, Embedder) and any(r.uses_embedding for r in routers):
        step(f"embedding {train.num_queries} training queries")
        embedder = make_embedder(embedder).fit(train.queries)
    results = []
    for r in routers:
        step(f"fitting {r.name}")
        t0 = time.perf_counter()
        r.fit(train, embedder)
        fit_s = time.perf_counter() - t0
        step(f"scoring {r.name}")
        res = evaluate_router(r, test, base)
        res["fit_seconds"] = fit_s
        results.append(res)
        if on_router is not None:
            on_router(res)
    return {
        "train": {"source": train.source, "queries": train.num_queries},
        "test": {"source": test.source, "queries": test.num_queries},
        "models": list(train.models),
        "embedder": embedder_label(embedder.config()) if isinstance(embedder, Embedder) else None,
        "baselines": base,
        "routers": results,
    }
