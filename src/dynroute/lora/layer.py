"""``LoRAMoELinear``: a frozen ``nn.Linear`` plus LoRA experts routed per token."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dynroute.dispatch import DispatchFn, get_dispatch
from dynroute.layers.experts import Experts
from dynroute.layers.moe import route_tokens
from dynroute.lora.experts import LoRAExperts
from dynroute.routing import Router, RouterFn, Routing, describe_router, extra_logits, layer_router
from dynroute.routing.losses import DYNAMIC_WEIGHT, LOAD_BALANCE_WEIGHT


class LinearView(nn.Module):
    """A module wrapping a linear ``self.base``: what code that inspects an ``nn.Linear``
    reads comes from it (``in_features``, ``out_features``, ``weight``:
    ``proj.weight.dtype`` keeps working); :meth:`adapter_state_dict` is everything else."""

    base: nn.Linear

    @property
    def in_features(self) -> int:
        """The base's ``in_features``."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """The base's ``out_features``."""
        return self.base.out_features

    @property
    def weight(self) -> Tensor:
        """The base's weight."""
        return self.base.weight

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """Every tensor but the base's (gate, experts, buffers), by name in this module."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}


class LoRAMoELinear(LinearView):
    """``y = base(x) + Σ_e w_e(x) · B_e A_e x · alpha/r`` with the base frozen.

    A gate ``nn.Linear(d_in, E + router.extra_logits)`` scores the adapters per token,
    any dynroute router turns the scores into a ``Routing`` (top-k, top-p, null experts so
    a token may use no adapter, DynMoLE, ...) and a dispatch path (``grouped`` by default)
    runs the experts and combines them with the routing weights.

    Args:
        base: the linear to adapt; its parameters are frozen (``requires_grad=False``).
        num_experts: E; rank: r; alpha: LoRA scale numerator.
        router: a registered router name/dict/``Router`` or a callable; ``**router_kwargs``
            its parameters (``"top_k"`` alone means k = min(2, E)).
        dispatch: "grouped" (default), "loop" or "dense" (references) or a callable.
        experts: an expert kind to use instead of ``LoRAExperts`` (e.g. SMoRA's rank-wise
            experts); its ``d_model``/``d_out`` must match the base.
        load_balance_weight, dynamic_weight, z_loss_weight: weights of the router losses
            (``dynroute.routing.losses.router_loss``), as in ``MoE``.

    Attributes:
        aux_loss: scalar auxiliary loss of the last forward (router losses plus the
            router's own ``aux_loss(routing)`` where it has one, e.g. DynMoLE's entropy
            term); None before the first call. Stored on the module, no global list.
        last_routing: the Routing of the last forward (statistics, plots).

    Shapes:
        x [..., d_in] -> [..., d_out] (the base's output shape and dtype).

    Example:
        >>> layer = LoRAMoELinear(nn.Linear(8, 6), num_experts=4, rank=2, router="top_p", p=0.5)
        >>> x = torch.randn(2, 3, 8)
        >>> bool(torch.equal(layer(x), layer.base(x)))   # B = 0 at init: the base exactly
        True
        >>> layer.last_routing.num_tokens, layer.aux_loss.shape
        (6, torch.Size([]))
    """

    def __init__(
        self,
        base: nn.Linear,
        num_experts: int = 4,
        rank: int = 8,
        alpha: float = 16.0,
        router: str | Mapping[str, Any] | Router | RouterFn = "top_k",
        dispatch: str | DispatchFn = "grouped",
        experts: Experts | None = None,
        load_balance_weight: float = LOAD_BALANCE_WEIGHT,
        dynamic_weight: float = DYNAMIC_WEIGHT,
        z_loss_weight: float = 0.0,
        **router_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRAMoELinear wraps an nn.Linear, got {type(base).__name__}")
        self.base = base.requires_grad_(False)
        d_in, d_out = base.in_features, base.out_features
        if experts is None:
            experts = LoRAExperts(d_in, d_out, num_experts, rank, alpha)
        if experts.d_model != d_in or getattr(experts, "d_out", experts.d_model) != d_out:
            raise ValueError(
                f"LoRAMoELinear: experts map {experts.d_model} -> "
                f"{getattr(experts, 'd_out', experts.d_model)}, the base linear {d_in} -> {d_out}"
            )
        num_experts = experts.num_experts
        self.route: RouterFn = layer_router(router, num_experts, **router_kwargs)
        self.dispatch: DispatchFn = get_dispatch(dispatch)
        self.num_experts = num_experts
        # adapters run in the base's dtype and device (a bf16 base gets bf16 adapters)
        weight = base.weight
        self.gate = nn.Linear(d_in, num_experts + extra_logits(self.route), bias=False)
        self.gate.to(device=weight.device, dtype=weight.dtype)
        self.experts: Experts = experts.to(device=weight.device, dtype=weight.dtype)
        self.load_balance_weight = load_balance_weight
        self.dynamic_weight = dynamic_weight
        self.z_loss_weight = z_loss_weight
        self.aux_loss: Tensor | None = None
        self.last_routing: Routing | None = None

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        flat = x.reshape(-1, x.shape[-1]).to(self.experts.dtype)
        routing, _, losses = route_tokens(self, flat)
        delta = self.dispatch(flat, routing, self.experts)
        self.aux_loss, self.last_routing = losses["total"], routing
        # y + 0 is y bit for bit, so an untrained adapter (B = 0) returns the base exactly
        return y + delta.reshape(y.shape).to(y.dtype)

    def extra_repr(self) -> str:
        return f"router={describe_router(self.route)}"


def lora_layers(model: nn.Module) -> dict[str, LoRAMoELinear]:
    """Every ``LoRAMoELinear`` of ``model`` by its module name.

    Example:
        >>> m = nn.Sequential(LoRAMoELinear(nn.Linear(4, 4), 2, rank=1))
        >>> list(lora_layers(m))
        ['0']
    """
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRAMoELinear)}


def lora_aux_loss(model: nn.Module) -> Tensor:
    """Sum of the auxiliary losses of every wrapped linear's last forward (0 if none ran).

    Example:
        >>> m = nn.Sequential(LoRAMoELinear(nn.Linear(4, 4), 2, rank=1, router="top_k", k=1))
        >>> _ = m(torch.randn(3, 4))
        >>> lora_aux_loss(m).item() > 0
        True
    """
    losses = [m.aux_loss for m in lora_layers(model).values() if m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else torch.zeros(())
