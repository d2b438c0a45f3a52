"""Expert-choice routing (Zhou et al., 2022): experts pick tokens, not tokens experts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from dynroute.routing.checks import as_router_logits
from dynroute.routing.registry import Router, register_router
from dynroute.routing.types import Routing


def expert_capacity(num_tokens: int, num_experts: int, capacity_factor: float) -> int:
    """Tokens per expert, C = ceil(capacity_factor · N / E), clipped to [0, N].

    Example:
        >>> expert_capacity(10, 4, 2.0)
        5
    """
    return min(num_tokens, math.ceil(capacity_factor * num_tokens / num_experts))


def check_capacity_factor(capacity_factor: float) -> None:
    """Raise unless capacity_factor is a finite number > 0."""
    if (
        isinstance(capacity_factor, bool)
        or not isinstance(capacity_factor, int | float)
        or (not capacity_factor > 0 or not math.isfinite(capacity_factor))
    ):
        raise ValueError(f"expert_choice: capacity_factor must be > 0, got {capacity_factor}")


def expert_choice(logits: Tensor, capacity_factor: float = 1.0) -> Routing:
    """Each expert takes its top-C tokens by router probability.

    Probabilities are a softmax over experts per token; expert i keeps the C
    tokens with the highest probability for i, C = ceil(capacity_factor · N / E).
    A token may get zero or several experts. The choice looks at every token in
    the batch, so it is not causal within a sequence: use it for training and
    analysis, not for autoregressive decoding.

    Args:
        logits: [N, E] router logits.
        capacity_factor: > 0; 1.0 gives on average one expert per token.

    Returns:
        Routing with E·C assignments.

    Example:
        >>> import torch
        >>> r = expert_choice(torch.tensor([[2.0, 0.0], [1.0, 0.0]]), capacity_factor=1.0)
        >>> r.expert.tolist(), r.token.tolist()
        ([0, 1], [0, 1])
    """
    check_capacity_factor(capacity_factor)
    logits = as_router_logits(logits, "expert_choice")
    n, e = logits.shape
    probs = torch.softmax(logits, dim=-1)
    c = expert_capacity(n, e, float(capacity_factor))
    weight, token = torch.topk(probs.t(), c, dim=-1)  # [E, C]
    expert = torch.arange(e, device=logits.device).repeat_interleave(c)
    return Routing(token.reshape(-1), expert, weight.reshape(-1), probs, e)


@register_router("expert_choice")
@dataclass(frozen=True)
class ExpertChoice(Router):
    """:func:`expert_choice` as a router: ``ExpertChoice(capacity_factor=2.0)(logits)``.

    Example:
        >>> import torch
        >>> ExpertChoice(1.0)(torch.zeros(4, 2)).num_assignments
        4
    """

    examples: ClassVar[tuple[str, ...]] = ("expert_choice:capacity_factor=0.75", "expert_choice")
    host_syncs: ClassVar[int | None] = 0  # E·C assignments
    #: an expert takes the batch's top tokens, later ones included
    causal: ClassVar[bool] = False

    capacity_factor: float = 1.0

    def __post_init__(self) -> None:
        check_capacity_factor(self.capacity_factor)

    def __call__(self, logits: Tensor) -> Routing:
        return expert_choice(logits, self.capacity_factor)
