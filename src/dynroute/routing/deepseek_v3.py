"""DeepSeek-V3 routing: sigmoid scores, a load-balancing bias used only for selection.

DeepSeek-V3 (DeepSeek-AI, 2024; REFERENCES.md "Standard pieces" and "More MoE routers"):

- scores ``s = sigmoid(z)`` [N, E] in float32;
- selection reads ``s + b`` with a per-expert bias b [E] (a buffer, no gradient).
  Group-limited: the E experts form ``n_group`` groups of E / n_group; a group's score is
  the sum of its two best ``s + b`` (the best one if a group has one expert); each token
  keeps its ``topk_group`` best groups, then takes its top ``k`` experts by ``s + b``
  within them;
- weights: the selected *unbiased* scores divided by their sum (``normalize``), times
  ``routed_scaling_factor``;
- after each optimizer step, from the tokens each expert received during that step's
  training forwards: ``b_i += u · sign(mean_j load_j − load_i)`` with
  ``u = bias_update_speed`` (DeepSeek-V3: 1e-3) — overloaded experts become less likely
  to be picked, with no auxiliary loss. transformers' DeepseekV3 has the bias but not
  this update.

``Routing.probs`` are the scores normalised per token (``s / Σ s``), which is what the
layer's load-balance and entropy losses read. DeepSeek-V3 trains without the
load-balance loss (only a tiny sequence-wise one, α = 1e-4): set the layer's
``load_balance_weight`` to 0 (or 1e-4) for the paper's setup; dynroute's default (1e-2)
is kept so every router is compared under the same losses unless you say otherwise.
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
from dynroute.routing.types import Routing

__all__ = ["DeepSeekV3", "DeepSeekV3State", "group_limited_top_k"]


def group_limited_top_k(selection: Tensor, k: int, n_group: int, topk_group: int) -> Tensor:
    """Indices [N, k] of each row's top-k columns of ``selection`` [N, E], restricted to
    its ``topk_group`` best groups (a group scores the sum of its top-2 entries).

    Example:
        >>> sel = torch.tensor([[0.9, 0.8, 0.1, 0.95]])  # groups {0, 1} and {2, 3}
        >>> group_limited_top_k(sel, 2, n_group=2, topk_group=1).tolist()
        [[0, 1]]
        >>> group_limited_top_k(sel, 2, n_group=1, topk_group=1).tolist()
        [[3, 0]]
    """
    n, e = selection.shape
    if n_group > 1:
        grouped = selection.view(n, n_group, e // n_group)
        top = min(2, e // n_group)
        group_scores = grouped.topk(top, dim=-1).values.sum(dim=-1)  # [N, G]
        keep = group_scores.topk(topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, keep, True)
        allowed = group_mask[:, :, None].expand_as(grouped).reshape(n, e)
        selection = selection.masked_fill(~allowed, float("-inf"))
    return selection.topk(k, dim=-1).indices


class DeepSeekV3State(nn.Module):
    """One layer's state: the selection bias b [E] and the load counted since the last step."""

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.register_buffer("bias", torch.zeros(num_experts))
        # an integer count: it stays exact when the model is cast to bf16
        self.register_buffer("load", torch.zeros(num_experts, dtype=torch.long))


@register_router("deepseek_v3")
@dataclass(frozen=True)
class DeepSeekV3(Router):
    """DeepSeek-V3's router; knobs as transformers' ``DeepseekV3Config`` names them.

    Example:
        >>> from dynroute.routing import make_router
        >>> router = make_router("deepseek_v3:k=2,n_group=2,topk_group=1")
        >>> state = router.make_state(num_experts=4, d_model=8)
        >>> r = router.route(torch.tensor([[3.0, 2.0, -1.0, 4.0]]), state)
        >>> r.expert.tolist(), [round(w, 3) for w in r.weight.tolist()]
        ([0, 1], [0.52, 0.48])
    """

    examples: ClassVar[tuple[str, ...]] = ("deepseek_v3:k=2,n_group=2,topk_group=1",)
    sweeps: ClassVar[Mapping[str, SweepSpec]] = {"deepseek_v3": FIXED_K}
    host_syncs: ClassVar[int | None] = 0  # N·k assignments

    k: int = 2
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    bias_update_speed: float = 1e-3
    normalize: bool = True

    def __post_init__(self) -> None:
        check_int(self.k, "k", "deepseek_v3", 1)
        check_int(self.n_group, "n_group", "deepseek_v3", 1)
        check_int(self.topk_group, "topk_group", "deepseek_v3", 1, self.n_group)
        if not self.routed_scaling_factor > 0:
            raise ValueError(
                f"deepseek_v3: routed_scaling_factor must be > 0, got {self.routed_scaling_factor}"
            )
        if self.bias_update_speed < 0:
            raise ValueError(
                f"deepseek_v3: bias_update_speed must be >= 0, got {self.bias_update_speed}"
            )

    def check_experts(self, num_experts: int) -> None:
        """Raise unless E splits into ``n_group`` groups holding at least k experts."""
        if num_experts % self.n_group:
            raise ValueError(
                f"deepseek_v3: {num_experts} experts do not split into n_group={self.n_group} "
                "equal groups; choose n_group dividing the number of experts"
            )
        reachable = self.topk_group * (num_experts // self.n_group)
        if self.k > reachable:
            raise ValueError(
                f"deepseek_v3: k={self.k} exceeds the {reachable} experts of topk_group="
                f"{self.topk_group} group(s); lower k or raise topk_group"
            )

    def make_state(self, num_experts: int, d_model: int) -> DeepSeekV3State:
        self.check_experts(num_experts)
        return DeepSeekV3State(num_experts)

    def route(
        self, logits: Tensor, state: nn.Module | None = None, ctx: RouteContext | None = None
    ) -> Routing:
        """Called bare (``router(logits)``, no layer's state): bias 0."""
        logits = as_router_logits(logits, "deepseek_v3")
        n, e = logits.shape
        self.check_experts(e)
        scores = torch.sigmoid(logits)
        selection = scores.detach()
        if state is not None:
            selection = selection + state.bias
        expert = group_limited_top_k(selection, self.k, self.n_group, self.topk_group)
        weight = scores.gather(1, expert)
        if self.normalize:
            weight = weight / weight.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        weight = weight * self.routed_scaling_factor
        probs = scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        token = torch.arange(n, device=logits.device).repeat_interleave(self.k)
        routing = Routing.from_assignments(token, expert.reshape(-1), weight.reshape(-1), probs, e)
        if state is not None and ctx is not None and ctx.training:
            with torch.no_grad():  # index_add_ needs no host sync (bincount would)
                state.load.index_add_(0, routing.expert, torch.ones_like(routing.expert))
        return routing

    def after_step(self, states: list[nn.Module]) -> None:
        with torch.no_grad():
            for s in states:
                # sign(mean − load): 0 for every expert when no token was routed
                load = s.load.double()
                s.bias += self.bias_update_speed * torch.sign(load.mean() - load).to(s.bias)
                s.load.zero_()
