"""Shared dispatch test cases: small shapes, every registered router's examples, seeded
weights."""

from __future__ import annotations

import functools

import torch

from dynroute.routing import Routing, make_router
from router_cases import EXAMPLES, route_fresh

E, D, F = 6, 8, 12
#: added to the logits of a router's extra gate columns (null experts): some tokens then
#: pick no real expert at all
EXTRA_BIAS = 4.0


def route_case(spec: str, logits: torch.Tensor) -> Routing:
    """Route logits [N, E + extra] with a fresh, seeded state (routers with a layer state or
    a context get one on each call); the extra columns get :data:`EXTRA_BIAS`."""
    extra = make_router(spec).extra_logits
    if extra:
        bias = [0.0] * (logits.shape[1] - extra) + [EXTRA_BIAS] * extra
        logits = logits + torch.tensor(bias, dtype=logits.dtype)
    return route_fresh(spec, logits)


#: case name (a router spec) -> logits [N, E + extra] -> Routing
ROUTERS = {spec: functools.partial(route_case, spec) for spec in EXAMPLES}


def make_case(n: int, router: str, seed: int = 0, dtype=torch.float32):
    """Tokens [n, D], a gate [D, E + extra] for ``router`` (a spec) and SwiGLU weights."""
    g = torch.Generator().manual_seed(seed)
    extra = make_router(router).extra_logits
    x = torch.randn(n, D, generator=g, dtype=dtype)
    gate = torch.randn(D, E + extra, generator=g, dtype=dtype) * 0.7
    gate_up = torch.randn(E, D, 2 * F, generator=g, dtype=dtype) * 0.3
    down = torch.randn(E, F, D, generator=g, dtype=dtype) * 0.3
    return [t.requires_grad_() for t in (x, gate, gate_up, down)]
