"""Query routers: predict each model's quality for a query; :mod:`dynroute.llm.decide`
turns predictions and costs into a choice.

Every module here registers its routers in :data:`QUERY_ROUTERS` and is imported when the
package is, so a new router is one module with ``@register_query_router("name")``;
routers defined elsewhere are found through ``DYNROUTE_PLUGINS=your.module`` (or a
``dynroute.plugins`` entry point) the first time their name is asked for.

Example:
    >>> from dynroute.llm.routers import QUERY_ROUTERS, make_query_router
    >>> sorted(n for n, cls in QUERY_ROUTERS.items() if cls.__module__.startswith("dynroute"))
    ['best_single', 'cascade', 'dc', 'knn', 'mf', 'mlp', 'oracle', 'random', 'sw_ranking']
    >>> make_query_router("cascade:scorer=mlp,threshold=0.4")
    Cascade(seed=0, scorer='mlp', threshold=0.4)
"""

from dynroute.llm.routers.base import (
    QUERY_ROUTERS,
    QueryRouter,
    load_router,
    make_query_router,
    register_query_router,
)

QUERY_ROUTERS.discover()

__all__ = [
    "QUERY_ROUTERS",
    "QueryRouter",
    "load_router",
    "make_query_router",
    "register_query_router",
]
