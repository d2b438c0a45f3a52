"""Library routers: pick adapters per token from a library added after the fact.

One module per router, registered by name in :data:`LIBRARY_ROUTERS` (a
``dynroute.common.registry.Registry``: drop a module here, or name yours in
``DYNROUTE_PLUGINS``). A router is a frozen dataclass called as ``router(layer, x)`` with
the :class:`~dynroute.lora.library.layer.LibraryLinear` (its prototypes, gates, names)
and the tokens ``x [N, d_in]``; it returns a ``Routing`` that the grouped dispatch runs,
so only the chosen adapters are computed.

Example:
    >>> sorted(LIBRARY_ROUTERS.lookup(n).name for n in ("arrow", "uniform"))
    ['arrow', 'uniform']
"""

from dynroute.lora.library.routers.base import (
    LIBRARY_ROUTERS,
    LibraryRouter,
    arrow_scores,
    phatgoose_scores,
    register_library_router,
    routing_from_top_k,
)

__all__ = [
    "LIBRARY_ROUTERS",
    "LibraryRouter",
    "arrow_scores",
    "phatgoose_scores",
    "register_library_router",
    "routing_from_top_k",
]
