"""Every registered router's examples (``Router.examples``), and how tests call them.

The lists are read from the registry when a test module imports this one, so a router
added as one module is in every registry-driven test (the Routing invariants, the
dispatch agreement, the layer and model tests, config validation, the sync count)
with no edit here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dynroute.common.registry import spec_name
from dynroute.routing import ROUTERS, RouteContext, Router, Routing, make_router, router_class


def examples(routers: Mapping[str, type[Router]] = ROUTERS) -> list[str]:
    """Every example spec of every registered router, in registration order."""
    return [spec for cls in list(routers.values()) for spec in cls.example_specs()]


def first_examples(routers: Mapping[str, type[Router]] = ROUTERS) -> list[str]:
    """One spec per router (its first example), for the costlier tests (models, the CLI)."""
    return [specs[0] for cls in list(routers.values()) if (specs := cls.example_specs())]


#: every example of every router (cheap tests)
EXAMPLES = examples()
#: the first example of every router (tests that build a model or run the CLI)
FIRST = first_examples()


def declared(spec: str) -> type[Router]:
    """The router class of a spec, whose declarations the tests read."""
    return router_class(spec_name(spec))


def route_fresh(
    spec: str, logits: torch.Tensor, training: bool = True, seq_len: int | None = None
) -> Routing:
    """Route ``logits`` [N, E + extra] with a fresh state (seeded), hidden states = the
    logits themselves (d = their width) and sequences of ``seq_len`` tokens (one sequence
    if None), through the layer's path (``make_state`` + ``route`` with a context)."""
    n, width = logits.shape
    router = make_router(spec)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = router.make_state(width - router.extra_logits, width)
        shape = (n // seq_len, seq_len) if seq_len else (n,)
        ctx = RouteContext(batch_shape=shape, hidden=logits, training=training)
        return router.route(logits, state, ctx)
