"""RMoE: a layerwise recurrent router — a GRU state carried across layers feeds each router.

"Layerwise Recurrent Router for Mixture-of-Experts" (Qiu et al., 2024; REFERENCES.md "More
MoE routers"). The rule, exactly, for MoE layer ℓ with token states x [N, d]:

- ``h_ℓ = GRUCell_ℓ(x, h_{ℓ−1})`` [N, H], ``h_0 = 0`` (the first MoE layer of a forward);
- logits ``z' = z + W_ℓ h_ℓ`` where z = the layer's own gate ``G_ℓ x`` and W_ℓ [E, H] a
  learned projection (init 0, so a fresh RMoE routes like its plain gate);
- top-k of ``softmax(z')`` (renormalised over the k when ``normalize``), as
  :func:`~dynroute.routing.top_k.top_k`;
- ``h_ℓ`` is handed to the next MoE layer through ``RouteContext.carry``; gradients flow
  through it across layers (the router is trained end to end by the LM loss).

Our choices: each layer owns its GRU cell and projection (``hidden_size`` H, default
``min(d_model, 64)``); the GRU reads the layer's input x directly (no separate down-
projection). Needs the token states, so it runs inside dynroute's MoE layers only (not
in the HF adapters).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from dynroute.routing.checks import as_router_logits, check_int
from dynroute.routing.context import RouteContext
from dynroute.routing.registry import Router, register_router
from dynroute.routing.sweep import FIXED_K, SweepSpec
from dynroute.routing.top_k import top_k
from dynroute.routing.types import Routing

__all__ = ["RMoE", "RMoEState"]


class RMoEState(nn.Module):
    """One layer's recurrent router: ``gru`` (d → H) and ``proj`` (H → E, init 0)."""

    def __init__(self, d_model: int, hidden_size: int, num_experts: int) -> None:
        super().__init__()
        self.gru = nn.GRUCell(d_model, hidden_size)
        # a bare parameter, not an nn.Linear: models re-initialise their Linears (normal),
        # and this one must start at 0
        self.proj = nn.Parameter(torch.zeros(num_experts, hidden_size))


@register_router("rmoe")
@dataclass(frozen=True)
class RMoE(Router):
    """Top-k over the gate's logits plus a projection of a GRU state carried across layers.

    Example:
        >>> from dynroute.layers import MoE
        >>> first, second = (MoE(8, 16, 4, router="rmoe:k=1,hidden_size=4") for _ in range(2))
        >>> x = torch.randn(2, 3, 8)
        >>> y, aux = first(x)
        >>> aux.carry.shape
        torch.Size([6, 4])
        >>> second(y, aux.carry)[1].routing.experts_per_token().tolist()
        [1, 1, 1, 1, 1, 1]
    """

    examples: ClassVar[tuple[str, ...]] = ("rmoe:k=2,hidden_size=8",)
    sweeps: ClassVar[Mapping[str, SweepSpec]] = {"rmoe": FIXED_K}
    host_syncs: ClassVar[int | None] = 0  # N·k assignments

    k: int = 2
    hidden_size: int | None = None
    normalize: bool = True

    def __post_init__(self) -> None:
        check_int(self.k, "k", "rmoe", 1)
        if self.hidden_size is not None:
            check_int(self.hidden_size, "hidden_size", "rmoe", 1)

    def make_state(self, num_experts: int, d_model: int) -> RMoEState:
        check_int(self.k, "k", "rmoe", 1, num_experts)
        return RMoEState(d_model, self.hidden_size or min(d_model, 64), num_experts)

    def __call__(self, logits: Tensor) -> Routing:
        raise ValueError(
            "rmoe needs its layer's GRU state and the token states: use it in dynroute's MoE "
            "layers (DynMoEForCausalLM, MoE); it is not supported in the HF adapters"
        )

    def route(
        self, logits: Tensor, state: nn.Module | None = None, ctx: RouteContext | None = None
    ) -> Routing:
        if state is None or ctx is None or ctx.hidden is None:
            return self(logits)
        logits = as_router_logits(logits, "rmoe")
        x = ctx.hidden.to(state.proj.dtype)
        carry = ctx.carry
        if carry is not None and carry.shape != (x.shape[0], state.gru.hidden_size):
            carry = None  # the previous layer's router was not an RMoE of this width
        h = state.gru(x, carry)
        ctx.carry = h
        return top_k(logits + (h @ state.proj.t()).float(), self.k, self.normalize)
