"""Dynamic top-p routing from "Harder Tasks Need More Experts" (Huang et al., ACL 2024)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from dynroute.routing.checks import as_router_logits, check_int
from dynroute.routing.registry import Router, register_router
from dynroute.routing.sweep import SweepSpec
from dynroute.routing.types import Routing


def top_p_mask(probs: Tensor, p: float | Tensor, max_experts: int | None = None) -> Tensor:
    """Boolean [N, E]: the shortest prefix of experts (by probability) whose mass exceeds p.

    An expert is kept when the cumulative probability of the experts ranked above
    it is still <= p, so the expert that crosses p is kept and every token keeps at
    least one. When the total never exceeds p (p = 1) every expert is kept. This is
    the rule of the paper's released code (``cumsum > p`` minus the first crossing).
    ``p`` may be a tensor (DTop-p's controlled threshold: no host sync).

    Example:
        >>> import torch
        >>> top_p_mask(torch.tensor([[0.5, 0.3, 0.2]]), p=0.6).tolist()
        [[True, True, False]]
    """
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    cum = torch.cumsum(sorted_p, dim=-1)
    keep_sorted = torch.ones_like(cum, dtype=torch.bool)
    # p >= 1 keeps everything (rounding could push the cumsum past 1 and drop an expert)
    keep_sorted[:, 1:] = (cum[:, :-1] <= p) | (p >= 1.0)
    if max_experts is not None:
        keep_sorted[:, max_experts:] = False
    return torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)


def check_p(p: float) -> None:
    """Raise unless 0 < p <= 1."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < float(p) <= 1.0:
        raise ValueError(f"top_p: p must be in (0, 1], got {p}")


def top_p(
    logits: Tensor, p: float, max_experts: int | None = None, normalize: bool = False
) -> Routing:
    """Give each token the fewest experts whose probabilities add up to more than p.

    Softmax in float32, sort descending, keep experts until the cumulative
    probability is strictly greater than ``p`` (the crossing expert is kept).
    Weights are the raw probabilities (the paper's choice) unless ``normalize``.

    Args:
        logits: [N, E] router logits, any float dtype.
        p: threshold in (0, 1]; the paper uses 0.4.
        max_experts: optional cap on experts per token.
        normalize: divide each token's kept weights by their sum.

    Returns:
        Routing with between N and N·E assignments.

    Example:
        >>> import torch
        >>> peaked = top_p(torch.tensor([[4.0, 0.0, 0.0, 0.0]]), p=0.4)
        >>> flat = top_p(torch.zeros(1, 4), p=0.4)
        >>> peaked.experts_per_token().tolist(), flat.experts_per_token().tolist()
        ([1], [2])
    """
    check_p(p)
    logits = as_router_logits(logits, "top_p")
    e = logits.shape[1]
    if max_experts is not None:
        check_int(max_experts, "max_experts", "top_p", 1, e)
    probs = torch.softmax(logits, dim=-1)
    mask = top_p_mask(probs.detach(), float(p), max_experts)
    weights = probs
    if normalize:
        weights = probs * mask / (probs * mask).sum(dim=-1, keepdim=True)
    return Routing.from_mask(mask, weights, probs)


@register_router("top_p")
@dataclass(frozen=True)
class TopP(Router):
    """:func:`top_p` as a router: ``TopP(p=0.4)(logits)``.

    Example:
        >>> import torch
        >>> TopP(p=0.4)(torch.zeros(1, 4)).num_assignments
        2
    """

    examples: ClassVar[tuple[str, ...]] = (
        "top_p:p=0.5",
        "top_p:p=0.7,max_experts=3,normalize=true",  # the cap and renormalised weights
    )
    sweeps: ClassVar[Mapping[str, SweepSpec]] = {
        # Paper-faithful top-p (weights not renormalised). k̄ at p = 0.2 / 0.3 / 0.5 measured
        # on configs/demo.toml (BENCHMARKS.md, section 2: 1.54 / 1.90 / 3.08; an earlier
        # config gave 1.51 / 1.82 / 2.89); p = 0.05 aims at 1 from below (top-p always keeps
        # one expert).
        "top_p": SweepSpec(
            "p",
            {1.0: 0.05, 1.5: 0.2, 2.0: 0.3, 3.0: 0.5},
            source="BENCHMARKS.md section 2 (k̄ 1.54 / 1.90 / 3.08 at p 0.2 / 0.3 / 0.5)",
        ),
        # Renormalised top-p: k̄ 1.55 at p = 0.4 and 2.29 at 0.55 (d_model 512, 31M tokens,
        # issue 17); 2.47 at p = 0.4 on configs/demo.toml (BENCHMARKS.md section 2). Smaller
        # p for k̄ 1, larger for 3.
        "top_p_normalized": SweepSpec(
            "p",
            {1.0: 0.1, 1.5: 0.3, 2.0: 0.4, 3.0: 0.6},
            fixed={"normalize": True},
            source="issue 17 (k̄ 1.55 at p 0.4, d_model 512) and BENCHMARKS.md section 2",
        ),
    }
    host_syncs: ClassVar[int | None] = 1  # the nonzero that sizes the assignments

    p: float
    max_experts: int | None = None
    normalize: bool = False

    def __post_init__(self) -> None:
        check_p(self.p)
        if self.max_experts is not None:
            check_int(self.max_experts, "max_experts", "top_p", 1)

    def __call__(self, logits: Tensor) -> Routing:
        return top_p(logits, self.p, self.max_experts, self.normalize)
