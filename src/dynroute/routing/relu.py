"""ReLU routing (ReMoE) with an adaptive L1 penalty toward a target sparsity.

ReMoE (Wang et al., ICLR 2025) and BlockFFN (Song et al., 2025); REFERENCES.md "More MoE
routers". The rule, exactly:

- gates ``g = ReLU(z)`` [N, E] (with ``rms_norm``: ``g = ReLU(z) / rms(ReLU(z)) · w``,
  ``rms`` over the experts of a token, ``w`` [E] learned, init 1: BlockFFN's RMSNorm);
- a token's experts are those with ``g > 0`` (anything from 0 to E); the combine weights
  are the gates themselves, not renormalised;
- the router's own loss is ``λ_t · mean_tokens Σ_i g_i`` (L1 of the gates, before any
  norm), with λ in a buffer adapted after each optimizer step from the sparsity
  ``S_t`` = the fraction of zero gates during that step:
  ``λ_{t+1} = λ_t · α^{sign(S_target − S_t)}``, ``S_target = 1 − target / E``;
  ReMoE's values: ``λ_0 = 1e-8``, ``α = 1.2``.

Our choices: the default is ReMoE's plain ReLU (``rms_norm=False``); ReMoE's
load-balance-weighted refinement of the L1 term is omitted (the layer's own load-balance
loss reads ``probs`` = softmax(z), so it still balances the gate); ``target`` is given in
experts per token so that it is on the frontier's axis. λ grows from 1e-8 by 1.2× a
step, so it takes ~80 steps before the penalty bites: short runs sit near E / 2 experts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from dynroute.routing.checks import as_router_logits
from dynroute.routing.context import RouteContext
from dynroute.routing.registry import Router, register_router
from dynroute.routing.sweep import SweepSpec
from dynroute.routing.types import Routing

__all__ = ["ReLURouter", "ReLUState"]


class ReLUState(nn.Module):
    """One layer's state: λ, the RMSNorm weight (used with ``rms_norm``), zero-gate counts."""

    def __init__(self, num_experts: int, l1_init: float, rms_norm: bool = False) -> None:
        super().__init__()
        self.num_experts = num_experts
        # only with rms_norm: an unused parameter would get no gradient (DDP complains)
        self.norm_weight = nn.Parameter(torch.ones(num_experts)) if rms_norm else None
        self.register_buffer("l1_weight", torch.tensor(float(l1_init)))
        # integer counts: exact under a bf16 cast
        self.register_buffer("zeros", torch.zeros((), dtype=torch.long))
        self.register_buffer("gates", torch.zeros((), dtype=torch.long))


@register_router("relu")
@dataclass(frozen=True)
class ReLURouter(Router):
    """ReLU gates, experts = the non-zero gates, L1 weight steered to ``target`` experts.

    Example:
        >>> from dynroute.routing import make_router
        >>> router = make_router("relu:target=1")
        >>> r = router(torch.tensor([[1.0, -2.0, 0.5], [-1.0, -1.0, -1.0]]))
        >>> r.experts_per_token().tolist(), r.weight.tolist()
        ([2, 0], [1.0, 0.5])
    """

    examples: ClassVar[tuple[str, ...]] = ("relu:target=2",)
    sweeps: ClassVar[Mapping[str, SweepSpec]] = {
        # the adaptive L1 weight aims at `target`, but only pushes toward sparsity
        # (BENCHMARKS.md section 8: target 2 gave k̄ 1.53), so measured k̄ may fall short
        "relu": SweepSpec("target", {1.5: 1.5, 2.0: 2.0, 3.0: 3.0}, source="L1 controller"),
    }
    host_syncs: ClassVar[int | None] = 1  # the nonzero of the positive gates

    target: float = 2.0
    l1_init: float = 1e-8
    alpha: float = 1.2
    rms_norm: bool = False
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if not float(self.target) > 0:
            raise ValueError(f"relu: target must be > 0 experts per token, got {self.target}")
        if not float(self.l1_init) > 0:
            raise ValueError(f"relu: l1_init must be > 0, got {self.l1_init}")
        if not float(self.alpha) > 1:
            raise ValueError(f"relu: alpha must be > 1, got {self.alpha}")

    def make_state(self, num_experts: int, d_model: int) -> ReLUState:
        if self.target > num_experts:
            raise ValueError(
                f"relu: target {self.target} exceeds the layer's {num_experts} experts; "
                f"choose target in (0, {num_experts}]"
            )
        return ReLUState(num_experts, self.l1_init, self.rms_norm)

    def route(
        self, logits: Tensor, state: nn.Module | None = None, ctx: RouteContext | None = None
    ) -> Routing:
        """Called bare (``router(logits)``, no layer's state): RMSNorm weight 1, no L1 term."""
        logits = as_router_logits(logits, "relu")
        relu = torch.relu(logits)
        gates = relu
        if self.rms_norm:
            rms = torch.rsqrt(relu.pow(2).mean(dim=-1, keepdim=True) + self.eps)
            norm_weight = getattr(state, "norm_weight", None)
            weight = norm_weight.float() if norm_weight is not None else 1.0
            gates = relu * rms * weight
        mask = relu.detach() > 0
        routing = Routing.from_mask(mask, gates, torch.softmax(logits, dim=-1))
        if state is not None and ctx is not None:
            if routing.num_tokens:
                ctx.add_loss(state.l1_weight * relu.sum(dim=-1).mean())
            if ctx.training:
                with torch.no_grad():
                    state.zeros += mask.numel() - routing.num_assignments
                    state.gates += mask.numel()
        return routing

    def after_step(self, states: list[nn.Module]) -> None:
        for s in states:
            total = int(s.gates)
            if total == 0:
                continue
            e = s.num_experts
            sparsity = int(s.zeros) / total
            direction = (1.0 - self.target / e) - sparsity  # > 0: not sparse enough
            if direction:
                s.l1_weight.mul_(self.alpha if direction > 0 else 1.0 / self.alpha)
            s.zeros.zero_()
            s.gates.zero_()
