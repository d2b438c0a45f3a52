"""Calling routers with their layer's state, and stepping that state once per optimizer step.

A layer that owns a router keeps it as ``route`` and the router's state (from
:meth:`Router.make_state`) as its ``router_state`` submodule. :func:`route_logits` is the
one call layers make; :func:`step_routers` is the one call a training loop makes after
``optimizer.step()``; :func:`check_router` runs a router the way a layer would, to check
a configuration before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dynroute.routing.context import RouteContext
from dynroute.routing.registry import Router
from dynroute.routing.types import Routing

__all__ = ["check_router", "route_logits", "router_layers", "step_routers"]


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


def check_router(router: Router, num_experts: int, d_model: int, tokens: int = 6) -> None:
    """Route a few random tokens the way a layer of ``num_experts`` experts over
    ``d_model`` features would (``make_state``, then ``route`` with a :class:`RouteContext`,
    in training and in evaluation), so the router's own checks raise now, not at step 1.

    Every registered router works here, those that need their layer's state included
    (RMoE, SMoE-Dropout refuse a bare ``router(logits)``). The global RNG is left as it
    was (a state's initialisation draws from it).

    Raises:
        ValueError / TypeError: the router's own message (a knob that does not fit E).

    Example:
        >>> from dynroute.routing import make_router
        >>> check_router(make_router("rmoe:k=2"), num_experts=4, d_model=8)
        >>> check_router(make_router("dtop_p:target=9"), num_experts=4, d_model=8)
        Traceback (most recent call last):
        ValueError: dtop_p: target 9 exceeds the layer's 4 experts; choose target in [1, 4]
    """
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(tokens, num_experts + router.extra_logits, generator=g)
    hidden = torch.randn(tokens, d_model, generator=g)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        state = router.make_state(num_experts, d_model)
        for training in (True, False):
            ctx = RouteContext(batch_shape=(2, tokens // 2), hidden=hidden, training=training)
            routing = router.route(logits, state, ctx)
            if routing.num_experts != num_experts:
                raise ValueError(
                    f"{router.describe()}: routed over {routing.num_experts} experts, "
                    f"the layer has {num_experts}"
                )
