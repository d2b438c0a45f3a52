"""Routers: logits [N, E] -> Routing, as functions and as registered dataclasses.

Every module in this folder is imported here, so a router class decorated with
:func:`register_router` in a new module is found by name with no other edit. Routers with
state (DTop-p, DeepSeek-V3, ...) keep it in their layer (``Router.make_state``); a training
loop calls :func:`step_routers` once per optimizer step. Each router class also declares
what the tests and the frontier sweep need (``Router.examples``, ``Router.sweeps``, ...).

Example:
    >>> import torch
    >>> from dynroute.routing import make_router, top_p
    >>> top_p(torch.randn(16, 8), p=0.4).num_experts
    8
    >>> make_router("top_p:p=0.4")(torch.randn(16, 8)).num_experts
    8
"""

from dynroute.routing.context import RouteContext
from dynroute.routing.expert_choice import ExpertChoice, expert_capacity, expert_choice
from dynroute.routing.null_experts import NullExperts, null_experts
from dynroute.routing.registry import (
    ROUTERS,
    Router,
    RouterFn,
    describe_router,
    extra_logits,
    layer_router,
    make_router,
    parse_router,
    register_router,
    router_class,
)
from dynroute.routing.state import check_router, route_logits, router_layers, step_routers
from dynroute.routing.sweep import SweepSpec
from dynroute.routing.top_k import TopK, top_k
from dynroute.routing.top_p import TopP, top_p, top_p_mask
from dynroute.routing.types import Routing

ROUTERS.discover()

__all__ = [
    "ROUTERS",
    "ExpertChoice",
    "NullExperts",
    "RouteContext",
    "Router",
    "RouterFn",
    "Routing",
    "SweepSpec",
    "TopK",
    "TopP",
    "check_router",
    "describe_router",
    "expert_capacity",
    "expert_choice",
    "extra_logits",
    "layer_router",
    "make_router",
    "null_experts",
    "parse_router",
    "register_router",
    "route_logits",
    "router_class",
    "router_layers",
    "step_routers",
    "top_k",
    "top_p",
    "top_p_mask",
]
