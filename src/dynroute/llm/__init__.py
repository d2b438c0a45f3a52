"""Routing queries among LLMs: outcome tables, embedders, routers, decisions, metrics.

Pick, per query, the model that answers well enough for the least cost: query routers
(:data:`QUERY_ROUTERS`, built by :func:`make_query_router`) predict each model's quality
``[Q, M]``; :func:`decide` picks ``argmax quality − λ·cost``;
:func:`evaluate` sweeps λ and scores the cost–quality curve with RouterBench's AIQ
against the zero router (mixing single models) and the oracle.

Example:
    >>> from dynroute.llm import evaluate, load_dataset
    >>> train, test = load_dataset("routellm-gsm8k")
    >>> r = evaluate(["knn"], train, test)
    >>> r["routers"][0]["aiq"] <= r["baselines"]["oracle"]["aiq"]
    True
"""

from dynroute.llm.data import (
    DATASETS,
    OutcomeTable,
    TableError,
    load_dataset,
    load_table,
    split_by_query,
)
from dynroute.llm.decide import (
    Calibration,
    calibrate_to_budget,
    calibrate_to_share,
    decide,
    lambda_grid,
)
from dynroute.llm.embed import Embedder, TfidfSvd, make_embedder
from dynroute.llm.evaluate import baselines, evaluate, evaluate_router
from dynroute.llm.metrics import aiq, apgr_cpt, cost_at_quality, upper_hull, zero_router
from dynroute.llm.routers import (
    QUERY_ROUTERS,
    QueryRouter,
    load_router,
    make_query_router,
    register_query_router,
)

__all__ = [
    "DATASETS",
    "QUERY_ROUTERS",
    "Calibration",
    "Embedder",
    "OutcomeTable",
    "QueryRouter",
    "TableError",
    "TfidfSvd",
    "aiq",
    "apgr_cpt",
    "baselines",
    "calibrate_to_budget",
    "calibrate_to_share",
    "cost_at_quality",
    "decide",
    "evaluate",
    "evaluate_router",
    "lambda_grid",
    "load_dataset",
    "load_router",
    "load_table",
    "make_embedder",
    "make_query_router",
    "register_query_router",
    "split_by_query",
    "upper_hull",
    "zero_router",
]
