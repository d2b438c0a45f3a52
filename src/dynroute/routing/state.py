"""Calling routers with their layer's state, and stepping that state once per optimizer step.

A layer that owns a router keeps it as ``route`` and the router's state (from
:meth:`Router.make_state`) as its ``router_state`` submodule. :func:`route_logits` is the
one call layers make; :func:`step_routers` is the one call a training loop makes after
``optimizer.step()``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from dynroute.routing.context import RouteContext
from dynroute.routing.registry import Router
from dynroute.routing.types import Routing

__all__ = ["route_logits", "router_layers", "step_routers"]


def route_logits(
    router: Router | Callable[[Tensor], Routing],
    logits: Tensor,
    state: nn.Module | None = None,
    ctx: RouteContext | None = None,
) -> Routing:
    """``router.route(logits, state, ctx)`` for a :class:`Router`, ``router(logits)`` for a
    plain callable.

    Example:
        >>> import torch
        >>> from dynroute.routing import make_router
        >>> route_logits(make_router("top_k:k=1"), torch.tensor([[0.0, 2.0]])).expert.tolist()
        [1]
    """
    if isinstance(router, Router):
        return router.route(logits, state, ctx)
    return router(logits)


def router_layers(model: nn.Module) -> list[tuple[Router, nn.Module]]:
    """(router, state) of every module of ``model`` whose ``route`` is a stateful Router.

    Example:
        >>> from dynroute.layers import MoE
        >>> moe = MoE(8, 16, 4, router="deepseek_v3")
        >>> [type(s).__name__ for _, s in router_layers(nn.Sequential(moe))]
        ['DeepSeekV3State']
    """
    found = []
    for module in model.modules():
        router = getattr(module, "route", None)
        state = getattr(module, "router_state", None)
        if isinstance(router, Router) and isinstance(state, nn.Module):
            found.append((router, state))
    return found


def step_routers(model: nn.Module, step: int, total_steps: int) -> None:
    """Update every router state of ``model`` after an optimizer step.

    Layers that share one router configuration are stepped together: ``after_step``
    gets the list of their states (DTop-p pools their statistics into one controller),
    then ``on_progress(state, step, total_steps)`` runs for each. A model without
    stateful routers costs a walk over its modules and nothing else.

    Args:
        model: the model (unwrapped or wrapped: ``modules()`` reaches the layers).
        step: optimizer steps done so far (1 after the first step).
        total_steps: the run's planned number of steps.

    Example:
        >>> import torch
        >>> from dynroute.layers import MoE
        >>> moe = MoE(8, 16, 4, router="smoe_dropout:k_start=1,k_end=4")
        >>> step_routers(moe, 5, 10)
        >>> int(moe.router_state.k)
        3
    """
    groups: dict[Router, list[nn.Module]] = {}
    for router, state in router_layers(model):
        groups.setdefault(router, []).append(state)
    for router, states in groups.items():
        router.after_step(states)
        for state in states:
            router.on_progress(state, step, total_steps)
