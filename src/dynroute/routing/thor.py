"""THOR: stochastic experts with consistency regularisation (no learned routing).

"Taming Sparsely Activated Transformer with Stochastic Experts" (Zuo et al., ICLR 2022;
REFERENCES.md "More MoE routers"). THOR activates experts at random for each input in
training *and* inference and trains them with a consistency-regularised loss so that all
experts make consistent predictions.

The rule here, exactly (a layer-local form: one forward pass, not THOR's two):

- training: each token gets two distinct experts drawn uniformly at random (torch's
  global RNG, so seeded runs repeat), weight ½ each; the layer's output is
  ``½ (y_a + y_b)`` and the router's own loss is
  ``consistency_weight · mean((y_a − y_b)²)`` over tokens and features — the two
  experts teach each other (THOR: a symmetric KL between the model's outputs of two
  passes; our substitute works inside one layer and one pass);
- inference: one expert drawn uniformly at random per token, weight 1 (THOR's
  random-expert inference), from a generator seeded with ``seed`` on every call so that
  evaluations repeat;
- the gate's logits are not used; ``Routing.probs`` are uniform (1/E).

So k̄ = 2 in training and 1 at inference. Knobs: ``consistency_weight`` (default 1.0,
ours), ``seed`` (0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from dynroute.routing.checks import as_router_logits
from dynroute.routing.context import RouteContext
from dynroute.routing.registry import Router, register_router
from dynroute.routing.sweep import SweepSpec
from dynroute.routing.types import Routing

__all__ = ["Thor"]


def _single(token: Tensor, expert: Tensor, probs: Tensor) -> Routing:
    return Routing.from_assignments(
        token, expert, torch.ones(token.shape, device=probs.device), probs, probs.shape[1]
    )


@register_router("thor")
@dataclass(frozen=True)
class Thor(Router):
    """Two random experts per token in training (consistency loss), one at inference.

    Example:
        >>> from dynroute.routing import RouteContext, make_router
        >>> router = make_router("thor")
        >>> training = RouteContext(training=True)
        >>> router.route(torch.zeros(3, 4), None, training).experts_per_token().tolist()
        [2, 2, 2]
        >>> router(torch.zeros(3, 4)).experts_per_token().tolist()  # inference
        [1, 1, 1]
    """

    examples: ClassVar[tuple[str, ...]] = ("thor",)
    sweeps: ClassVar[Mapping[str, SweepSpec]] = {
        # no knob for k̄: two random experts in training, one at inference (k̄ = 1)
        "thor": SweepSpec("consistency_weight", {1.0: 1.0}, source="the rule: one expert"),
    }
    # host_syncs not pinned: the CPU count (1) is the copy of the CPU-drawn pair to the
    # logits' device, not a device-to-host sync
    constant_weights: ClassVar[bool] = True  # ½ and ½ (1 at inference), whatever the gate

    consistency_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not float(self.consistency_weight) >= 0:
            raise ValueError(
                f"thor: consistency_weight must be >= 0, got {self.consistency_weight}"
            )

    def route(
        self, logits: Tensor, state: nn.Module | None = None, ctx: RouteContext | None = None
    ) -> Routing:
        """Called bare (``router(logits)``) or in evaluation: one random expert per token."""
        logits = as_router_logits(logits, "thor")
        n, e = logits.shape
        probs = torch.full((n, e), 1.0 / e, device=logits.device)
        token = torch.arange(n, device=logits.device)
        if ctx is not None and ctx.training and e >= 2:
            # two distinct experts: the top-2 of uniform noise
            pair = torch.rand(n, e).topk(2, dim=-1).indices.to(logits.device)
            return Routing.from_assignments(
                token.repeat_interleave(2),
                pair.reshape(-1),
                torch.full((2 * n,), 0.5, device=logits.device),
                probs,
                e,
            )
        g = torch.Generator().manual_seed(self.seed)
        expert = torch.randint(0, e, (n,), generator=g).to(logits.device)
        return _single(token, expert, probs)

    def combine(
        self,
        flat: Tensor,
        routing: Routing,
        run: Callable[[Tensor, Routing], Tensor],
        state: nn.Module | None = None,
        ctx: RouteContext | None = None,
    ) -> Tensor | None:
        n = routing.num_tokens
        if ctx is None or routing.num_assignments != 2 * n or n == 0:
            return None  # inference (one expert) or no tokens: the layer's usual dispatch
        e = routing.num_experts
        # each token's two assignments, lower expert first
        order = torch.sort(routing.token * e + routing.expert).indices
        expert = routing.expert[order].view(n, 2)
        token = torch.arange(n, device=flat.device)
        y_a = run(flat, _single(token, expert[:, 0], routing.probs))
        y_b = run(flat, _single(token, expert[:, 1], routing.probs))
        if self.consistency_weight:
            ctx.add_loss(self.consistency_weight * (y_a.float() - y_b.float()).pow(2).mean())
        return 0.5 * (y_a + y_b)
