"""Query routers: predict each model's quality for a query; :mod:`dynroute.llm.decide`
turns predictions and costs into a choice. Every module here registers its routers.

Example:
    >>> from dynroute.llm.routers import ROUTERS
    >>> sorted(ROUTERS)
    ['best_single', 'cascade', 'dc', 'knn', 'mf', 'mlp', 'oracle', 'random', 'sw_ranking']
"""

from dynroute.llm.routers import cascade, dc, knn, mf, mlp, simple, sw_ranking
from dynroute.llm.routers.base import (
    ROUTERS,
    QueryRouter,
    load_router,
    make_router,
    register_router,
)

__all__ = [
    "ROUTERS",
    "QueryRouter",
    "cascade",
    "dc",
    "knn",
    "load_router",
    "make_router",
    "mf",
    "mlp",
    "register_router",
    "simple",
    "sw_ranking",
]
