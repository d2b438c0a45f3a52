"""Routers by name, so configs and the CLI can say ``router = "top_p"``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor

from dynroute.routing.expert_choice import expert_choice
from dynroute.routing.null_experts import null_experts
from dynroute.routing.top_k import top_k
from dynroute.routing.top_p import top_p
from dynroute.routing.types import Routing

RouterFn = Callable[[Tensor], Routing]

ROUTERS: dict[str, Callable[..., Routing]] = {
    "top_k": top_k,
    "top_p": top_p,
    "null_experts": null_experts,
    "expert_choice": expert_choice,
}


def get_router(name: str, **kwargs: Any) -> RouterFn:
    """Bind a routing function by name to its keyword arguments.

    Unknown names and unknown or missing arguments raise at build time, not at
    the first forward pass.

    Example:
        >>> import torch
        >>> route = get_router("top_p", p=0.4)
        >>> route(torch.zeros(2, 4)).experts_per_token().tolist()
        [2, 2]
    """
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; choose one of {', '.join(ROUTERS)}")
    fn = ROUTERS[name]
    params = inspect.signature(fn).parameters
    unknown = set(kwargs) - set(params)
    if unknown:
        accepted = ", ".join(p for p in params if p != "logits")
        raise TypeError(f"{name}: unknown argument(s) {sorted(unknown)}; accepted: {accepted}")
    missing = [
        p.name
        for p in params.values()
        if p.name != "logits" and p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise TypeError(f"{name}: missing required argument(s) {missing}")
    return functools.partial(fn, **kwargs)


def extra_logits(router: RouterFn) -> int:
    """How many router columns beyond the E real experts a router consumes (null experts).

    Example:
        >>> extra_logits(get_router("null_experts", k=2, num_null=3))
        3
    """
    if isinstance(router, functools.partial) and router.func is null_experts:
        return int(router.keywords.get("num_null", 0))
    return int(getattr(router, "extra_logits", 0))
