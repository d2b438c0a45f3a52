"""The MoE block: router + experts (any ``Experts`` kind; SwiGLU by default) + dispatch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dynroute.common.registry import spec_name
from dynroute.dispatch import DispatchFn, get_dispatch
from dynroute.layers.experts import Experts, ExpertsSpec, make_experts
from dynroute.routing import Router, RouterFn, Routing, describe_router, extra_logits, layer_router
from dynroute.routing.context import RouteContext
from dynroute.routing.losses import DYNAMIC_WEIGHT, LOAD_BALANCE_WEIGHT, router_loss
from dynroute.routing.state import route_logits


@dataclass
class MoEAux:
    """What an MoE forward pass reports besides its output.

    Attributes:
        routing: the Routing of this call (N = number of tokens).
        logits: [N, E (+ nulls)] router logits, float32.
        load_balance, dynamic, z: scalar auxiliary losses.
        loss: their weighted sum, ready to add to the LM loss (a stateful router's own
            term included).
        carry: what the router hands to the next MoE layer (RMoE's GRU state), or None.
    """

    routing: Routing
    logits: Tensor
    load_balance: Tensor
    dynamic: Tensor
    z: Tensor
    loss: Tensor
    carry: Any = None

    @property
    def mean_experts(self) -> float:
        """Mean real experts per token in this call."""
        return self.routing.mean_experts()


def route_tokens(
    layer: nn.Module, flat: Tensor, ctx: RouteContext | None = None
) -> tuple[Routing, Tensor, dict[str, Tensor]]:
    """gate → router → auxiliary losses, for any layer with ``gate``, ``route``,
    ``num_experts`` and the three loss weights (``MoE``, LoRA expert layers).

    A stateful router gets the layer's ``router_state`` and ``ctx``; a loss it puts in
    ``ctx.aux_loss`` is added as ``router`` (and to ``total``) and cleared from ``ctx``.

    Returns:
        the Routing of flat [N, d] tokens, the float32 logits [N, E'], ``router_loss``'s dict.
    """
    logits = layer.gate(flat).float()
    routing = route_logits(layer.route, logits, getattr(layer, "router_state", None), ctx)
    if routing.num_experts != layer.num_experts:
        raise ValueError(
            f"{type(layer).__name__}: router returned a Routing over "
            f"{routing.num_experts} experts, the layer has {layer.num_experts}"
        )
    losses = router_loss(
        routing,
        logits,
        layer.load_balance_weight,
        layer.dynamic_weight,
        layer.z_loss_weight,
        router=layer.route,
    )
    if ctx is not None and ctx.aux_loss is not None:
        losses = add_router_loss(losses, ctx.aux_loss)
        ctx.aux_loss = None
    return routing, logits, losses


def add_router_loss(losses: dict[str, Tensor], extra: Tensor) -> dict[str, Tensor]:
    """``losses`` with ``extra`` added to its ``router`` term and to ``total``.

    Example:
        >>> import torch
        >>> out = add_router_loss({"total": torch.tensor(1.0)}, torch.tensor(0.5))
        >>> float(out["router"]), float(out["total"])
        (0.5, 1.5)
    """
    own = losses.get("router")
    return {
        **losses,
        "router": extra if own is None else own + extra,
        "total": losses["total"] + extra,
    }


def layer_experts(
    spec: ExpertsSpec, d_model: int, d_ff: int | None, num_experts: int, expert_layout: str
) -> Experts:
    """:func:`~dynroute.layers.experts.make_experts` for a layer: the built experts must
    hold ``num_experts`` experts, and a ``"per_expert"`` layout needs a kind that has it.

    Example:
        >>> layer_experts("mlp", 8, 16, 4, "per_expert")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: MoE: expert_layout='per_expert', but the expert kind mlp has no layout; ...
    """
    experts = make_experts(
        spec, d_model=d_model, d_ff=d_ff, num_experts=num_experts, layout=expert_layout
    )
    if experts.num_experts != num_experts:
        raise ValueError(
            f"MoE: expert kind {spec_name(spec)} holds {experts.num_experts} experts, the "
            f"layer has num_experts={num_experts}; drop num_experts from the spec"
        )
    layout = getattr(experts, "layout", None)
    if expert_layout != "stacked" and layout != expert_layout:
        has = "no layout" if layout is None else f"layout {layout!r}"
        raise ValueError(
            f"MoE: expert_layout={expert_layout!r}, but the expert kind {spec_name(spec)} "
            f"has {has}; leave expert_layout at 'stacked' or use a kind with that layout "
            "(swiglu)"
        )
    return experts


class MoE(nn.Module):
    """A Mixture-of-Experts FFN with any router and any dispatch path.

    Args:
        d_model: model width; d_ff: hidden width of each expert; num_experts: E
            (both may be omitted when ``experts`` is a module).
        router: a registered router: a name (``"top_p"``, ``"top_p:p=0.4"``, with
            ``router_kwargs``), a dict ``{"name": ..., **params}`` or a
            :class:`~dynroute.routing.Router`; or any callable ``logits [N, E] -> Routing``.
            The gate emits E + ``router.extra_logits`` columns (null experts).
        dispatch: "grouped" (default), "loop", "dense", or a callable.
        load_balance_weight, dynamic_weight, z_loss_weight: weights of the
            auxiliary losses summed into ``aux.loss`` (defaults: the paper's).
        expert_layout: "stacked" (default; grouped GEMMs, transformers' layout) or
            "per_expert" (a parameter pair per expert: only experts that got tokens get
            gradients; faster training with few tokens per expert on CPU), for a kind
            built from a spec that takes a ``layout`` (SwiGLU). See
            :class:`~dynroute.layers.experts.SwiGLUExperts`.
        experts: the expert kind: a registered kind's spec (``"mlp"``,
            ``"mlp:d_ff=64"``, ``{"name": "mlp", ...}``; ``d_model``, ``d_ff`` and
            ``num_experts`` filled from the layer's), or any
            :class:`~dynroute.layers.experts.Experts` module. Default: ``"swiglu"``.
        **router_kwargs: arguments of a named router, e.g. ``p=0.4``.

    Shapes:
        x [..., d_model] -> y [..., d_model], aux (MoEAux over N = x.numel() / d_model tokens).

    Example:
        >>> import torch
        >>> moe = MoE(16, 32, num_experts=4, router="top_p", p=0.4)
        >>> y, aux = moe(torch.randn(2, 3, 16))
        >>> y.shape, aux.routing.num_tokens
        (torch.Size([2, 3, 16]), 6)
        >>> from dynroute.layers.experts import MLPExperts
        >>> MoE(16, experts=MLPExperts(16, 32, 4), router="top_k", k=1)(torch.randn(5, 16))[0].shape
        torch.Size([5, 16])
        >>> MoE(16, 32, 4, experts="mlp:d_ff=8").experts
        MLPExperts(num_experts=4, d_model=16, d_ff=8)
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int | None = None,
        num_experts: int | None = None,
        router: str | Mapping[str, Any] | Router | RouterFn = "top_k",
        dispatch: str | DispatchFn = "grouped",
        load_balance_weight: float = LOAD_BALANCE_WEIGHT,
        dynamic_weight: float = DYNAMIC_WEIGHT,
        z_loss_weight: float = 0.0,
        expert_layout: str = "stacked",
        experts: Experts | ExpertsSpec = "swiglu",
        **router_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(experts, Experts):
            if num_experts not in (None, experts.num_experts) or experts.d_model != d_model:
                raise ValueError(
                    f"MoE: experts hold {experts.num_experts} experts of width "
                    f"{experts.d_model}, the layer was given num_experts={num_experts}, "
                    f"d_model={d_model}"
                )
            num_experts = experts.num_experts
        elif num_experts is None:
            raise TypeError("MoE: give num_experts (and d_ff), or an experts module")
        self.route: RouterFn = layer_router(router, num_experts, **router_kwargs)
        self.dispatch: DispatchFn = get_dispatch(dispatch)
        self.num_experts = num_experts
        self.gate = nn.Linear(d_model, num_experts + extra_logits(self.route), bias=False)
        # built after the gate: seeded models keep their initial weights
        self.experts: Experts = (
            experts
            if isinstance(experts, Experts)
            else layer_experts(experts, d_model, d_ff, num_experts, expert_layout)
        )
        self.load_balance_weight = load_balance_weight
        self.dynamic_weight = dynamic_weight
        self.z_loss_weight = z_loss_weight
        # a stateful router's parameters/buffers (DTop-p's scale and controller, DeepSeek's
        # bias, RMoE's GRU, ...); built last so seeded models keep their other weights
        self.router_state: nn.Module | None = (
            self.route.make_state(num_experts, d_model) if isinstance(self.route, Router) else None
        )

    def forward(self, x: Tensor, carry: Any = None) -> tuple[Tensor, MoEAux]:
        """x [..., d] -> y [..., d] and :class:`MoEAux`; ``carry`` comes from the previous
        MoE layer (``aux.carry`` of its output; RMoE's recurrent router state)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(self.experts.dtype)
        ctx = RouteContext(tuple(shape[:-1]), flat, self.training, carry)
        routing, logits, losses = route_tokens(self, flat, ctx)
        y = self.combine_experts(flat, routing, ctx)
        if ctx.aux_loss is not None:  # set while combining (THOR's consistency term)
            losses = add_router_loss(losses, ctx.aux_loss)
        aux = MoEAux(
            routing,
            logits,
            losses["load_balance"],
            losses["dynamic"],
            losses["z"],
            losses["total"],
            ctx.carry,
        )
        return y.to(x.dtype).reshape(shape), aux

    def combine_experts(self, flat: Tensor, routing: Routing, ctx: RouteContext) -> Tensor:
        """The router's own combine (THOR) or, by default, :meth:`run_experts`."""
        if isinstance(self.route, Router):
            y = self.route.combine(flat, routing, self.run_experts, self.router_state, ctx)
            if y is not None:
                return y
        return self.run_experts(flat, routing)

    def run_experts(self, flat: Tensor, routing: Routing) -> Tensor:
        """Expert outputs combined per token, [N, d_model]; subclasses change where experts run."""
        return self.dispatch(flat, routing, self.experts)

    def extra_repr(self) -> str:
        return f"router={describe_router(self.route)}"
