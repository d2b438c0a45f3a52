"""Entropy-adaptive k: a token gets more experts the flatter its router distribution.

A training-free rule for trained top-k gates (``dynroute.posthoc``): a token whose router
is sure of one expert runs one, a token whose probabilities are spread runs several.
The effective number of experts the router spreads over, ``exp(H(p))`` (1 for a one-hot
distribution, E for a uniform one), times ``scale`` sets the count, rounded up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from dynroute.routing.checks import as_router_logits, check_int
from dynroute.routing.registry import Router, register_router
from dynroute.routing.types import Routing


def entropy_counts(probs: Tensor, scale: float, max_experts: int | None = None) -> Tensor:
    """LongTensor [N]: ``clamp(ceil(scale * exp(H(p))), 1, max_experts or E)`` per token.

    Example:
        >>> entropy_counts(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25] * 4]), 0.5).tolist()
        [1, 2]
    """
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1)
    counts = torch.ceil(scale * entropy.exp() - 1e-6).long()
    return counts.clamp(1, max_experts or probs.shape[-1])


def entropy_k(
    logits: Tensor, scale: float, max_experts: int | None = None, normalize: bool = True
) -> Routing:
    """Route each token to its ``entropy_counts`` most probable experts.

    Args:
        logits: [N, E] router logits, any float dtype.
        scale: experts per unit of effective expert count ``exp(H)``; larger = more experts.
        max_experts: optional cap on experts per token (default E).
        normalize: divide the kept probabilities by their sum (as Mixtral's top-k does).

    Returns:
        Routing with between N and N·E assignments.

    Example:
        >>> r = entropy_k(torch.tensor([[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]), 0.5)
        >>> r.experts_per_token().tolist()
        [1, 2]
    """
    logits = as_router_logits(logits, "entropy_k")
    e = logits.shape[1]
    if max_experts is not None:
        check_int(max_experts, "max_experts", "entropy_k", 1, e)
    probs = torch.softmax(logits, dim=-1)
    counts = entropy_counts(probs.detach(), scale, max_experts)
    order = torch.argsort(probs.detach(), dim=-1, descending=True)
    rank = torch.arange(e, device=logits.device)[None, :]
    mask = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order, rank < counts[:, None])
    weights = probs
    if normalize:
        weights = probs * mask / (probs * mask).sum(dim=-1, keepdim=True)
    return Routing.from_mask(mask, weights, probs)


@register_router("entropy_k")
@dataclass(frozen=True)
class EntropyK(Router):
    """:func:`entropy_k` as a router: ``EntropyK(scale=0.5)(logits)``.

    Example:
        >>> EntropyK(scale=0.5)(torch.zeros(3, 4)).experts_per_token().tolist()
        [2, 2, 2]
    """

    examples: ClassVar[tuple[str, ...]] = (
        "entropy_k:scale=0.5",
        "entropy_k:scale=1.0,max_experts=2,normalize=false",  # the cap and raw weights
    )
    host_syncs: ClassVar[int | None] = 1  # the nonzero that sizes the assignments

    scale: float
    max_experts: int | None = None
    normalize: bool = True

    def __post_init__(self) -> None:
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, int | float)
            or not self.scale > 0
        ):
            raise ValueError(f"entropy_k: scale must be > 0, got {self.scale}")
        if self.max_experts is not None:
            check_int(self.max_experts, "max_experts", "entropy_k", 1)

    def __call__(self, logits: Tensor) -> Routing:
        return entropy_k(logits, float(self.scale), self.max_experts, self.normalize)
