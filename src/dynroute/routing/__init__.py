"""Routing functions: logits [N, E] -> Routing. Pure functions, no modules.

Example:
    >>> import torch
    >>> from dynroute.routing import top_p
    >>> top_p(torch.randn(16, 8), p=0.4).num_experts
    8
"""

from dynroute.routing.expert_choice import expert_capacity, expert_choice
from dynroute.routing.null_experts import null_experts
from dynroute.routing.registry import ROUTERS, RouterFn, extra_logits, get_router
from dynroute.routing.top_k import top_k
from dynroute.routing.top_p import top_p, top_p_mask
from dynroute.routing.types import Routing

__all__ = [
    "ROUTERS",
    "RouterFn",
    "Routing",
    "expert_capacity",
    "expert_choice",
    "extra_logits",
    "get_router",
    "null_experts",
    "top_k",
    "top_p",
    "top_p_mask",
]
