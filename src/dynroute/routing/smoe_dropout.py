"""SMoE-Dropout: a fixed random router and a number of experts that grows during training.

"Sparse MoE as the New Dropout: Scaling Dense and Self-Slimmable Transformers" (Chen et
al., ICLR 2023; REFERENCES.md "More MoE routers"). The rule, exactly:

- scores ``s = x R`` with R [d, E] drawn once from N(0, 1/d) when the layer is built and
  never trained (a buffer: saved with the model, not in the optimizer); the layer's own
  gate is not used;
- each token takes the top ``k_t`` experts by s, weights ``softmax(s)`` renormalised over
  them (constants: nothing upstream of the router learns from routing);
- ``k_t`` grows linearly over training, each value in ``k_start … k_end`` getting an
  equal share of the steps: after step t of T,
  ``k_t = min(k_end, k_start + ⌊(k_end − k_start + 1) · t / T⌋)``;
- at inference k = ``eval_k`` if set ("self-slimmable": any k works), else the current
  ``k_t`` (``k_end`` once training is done).

Knobs: ``k_start`` = 1, ``k_end`` (None: all E experts, the paper's end point),
``eval_k``.
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
from dynroute.routing.sweep import SweepSpec
from dynroute.routing.types import Routing

__all__ = ["SMoEDropout", "SMoEDropoutState"]


class SMoEDropoutState(nn.Module):
    """One layer's state: the fixed random router R [d, E] and the current k (buffers)."""

    def __init__(self, d_model: int, num_experts: int, k: int) -> None:
        super().__init__()
        self.register_buffer("router", torch.randn(d_model, num_experts) / d_model**0.5)
        self.register_buffer("k", torch.tensor(k))


@register_router("smoe_dropout")
@dataclass(frozen=True)
class SMoEDropout(Router):
    """Top-k of a frozen random router, k growing from ``k_start`` to ``k_end``.

    Example:
        >>> from dynroute.routing import RouteContext, make_router
        >>> router = make_router("smoe_dropout:k_start=1,k_end=3")
        >>> state = router.make_state(num_experts=4, d_model=8)
        >>> ctx = RouteContext(hidden=torch.randn(5, 8), training=True)
        >>> router.route(torch.zeros(5, 4), state, ctx).mean_experts()
        1.0
        >>> [router.k_at(t, 9, 4) for t in range(10)]
        [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    """

    examples: ClassVar[tuple[str, ...]] = ("smoe_dropout:k_start=2,k_end=3",)
    sweeps: ClassVar[Mapping[str, SweepSpec]] = {
        # k grows from 1 to k_end during training and is k_end at evaluation
        "smoe_dropout": SweepSpec(
            "k_end", {1.0: 1, 2.0: 2, 3.0: 3}, source="exact at evaluation: k_end"
        ),
    }
    # reading k (a buffer) once per layer call, and the nonzero of the mask
    host_syncs: ClassVar[int | None] = 2
    constant_weights: ClassVar[bool] = True  # a frozen random router

    k_start: int = 1
    k_end: int | None = None
    eval_k: int | None = None

    def __post_init__(self) -> None:
        check_int(self.k_start, "k_start", "smoe_dropout", 1)
        if self.k_end is not None:
            check_int(self.k_end, "k_end", "smoe_dropout", self.k_start)
        if self.eval_k is not None:
            check_int(self.eval_k, "eval_k", "smoe_dropout", 1)

    def k_at(self, step: int, total_steps: int, num_experts: int) -> int:
        """k after ``step`` of ``total_steps`` optimizer steps."""
        end = self.k_end if self.k_end is not None else num_experts
        grown = self.k_start + (end - self.k_start + 1) * step // max(total_steps, 1)
        return min(end, grown)

    def make_state(self, num_experts: int, d_model: int) -> SMoEDropoutState:
        for name in ("k_start", "k_end", "eval_k"):
            value = getattr(self, name)
            if value is not None:
                check_int(value, name, "smoe_dropout", 1, num_experts)
        return SMoEDropoutState(d_model, num_experts, self.k_start)

    def __call__(self, logits: Tensor) -> Routing:
        raise ValueError(
            "smoe_dropout routes with its layer's fixed random router over the token states: "
            "use it in dynroute's MoE layers; it is not supported in the HF adapters"
        )

    def route(
        self, logits: Tensor, state: nn.Module | None = None, ctx: RouteContext | None = None
    ) -> Routing:
        if state is None or ctx is None or ctx.hidden is None:
            return self(logits)
        e = as_router_logits(logits, "smoe_dropout").shape[1]
        with torch.no_grad():
            scores = ctx.hidden.float() @ state.router.float()
            probs = torch.softmax(scores, dim=-1)
        # k is read on the host once per layer call (a buffer, so it resumes with the run)
        k = int(state.k) if ctx.training or self.eval_k is None else self.eval_k
        k = min(k, e)
        chosen = probs.topk(k, dim=-1).indices
        mask = torch.zeros_like(probs, dtype=torch.bool).scatter(1, chosen, True)
        weights = probs * mask / (probs * mask).sum(dim=-1, keepdim=True).clamp_min(1e-20)
        return Routing.from_mask(mask, weights, probs)

    def on_progress(self, state: nn.Module, step: int, total_steps: int) -> None:
        state.k.fill_(self.k_at(step, total_steps, state.router.shape[1]))
