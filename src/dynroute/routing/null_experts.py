"""Null experts (AdaMoE, Zeng et al., 2024): top-k over real + zero-cost null experts."""

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


def null_experts(logits: Tensor, k: int, num_null: int) -> Routing:
    """Top-k over E real and ``num_null`` null experts; nulls cost nothing.

    The last ``num_null`` columns of ``logits`` score the null experts. One
    softmax runs over all E + M columns, the top k are chosen, and a token that
    picks r nulls runs k − r real experts (0..k). As in AdaMoE's released code the
    weights are renormalized over the selected *real* experts only.

    Args:
        logits: [N, E + num_null] router logits.
        k: slots per token, 1 <= k <= E + num_null.
        num_null: M >= 1 null experts (must leave E >= 1 real ones).

    Returns:
        Routing over the E real experts, with ``null_probs`` [N, M] and
        ``null_selected`` [N] set for the load-balance loss.

    Example:
        >>> import torch
        >>> r = null_experts(torch.tensor([[0.0, 0.0, 5.0], [5.0, 4.0, 0.0]]), k=2, num_null=1)
        >>> r.num_experts, r.experts_per_token().tolist()
        (2, [1, 2])
    """
    logits = as_router_logits(logits, "null_experts", min_experts=2)
    n, total = logits.shape
    check_int(num_null, "num_null", "null_experts", 1, total - 1)
    check_int(k, "k", "null_experts", 1, total)
    e = total - num_null
    probs = torch.softmax(logits, dim=-1)
    _, top_i = torch.topk(probs, k, dim=-1)
    real = top_i < e
    # Renormalised over the real experts picked: a softmax of their logits, which stays
    # exact where their probabilities underflow (probabilities / their sum would not).
    picked = torch.where(real, logits.gather(-1, top_i), float("-inf"))
    picked = torch.where(real.any(dim=-1, keepdim=True), picked, 0.0)
    weight = torch.softmax(picked, dim=-1)
    token = torch.arange(n, device=logits.device)[:, None].expand(n, k)
    # A varies with the batch: one nonzero (the one host sync), then integer indexing
    # (boolean indexing would sync once per tensor, and again in backward)
    keep = real.reshape(-1).nonzero().squeeze(1)
    return Routing.from_assignments(
        token.reshape(-1)[keep],
        top_i.reshape(-1)[keep],
        weight.reshape(-1)[keep],
        probs[:, :e],
        e,
        null_probs=probs[:, e:],
        null_selected=(~real).sum(dim=-1),
    )


@register_router("null_experts")
@dataclass(frozen=True)
class NullExperts(Router):
    """:func:`null_experts` as a router; the gate emits ``num_null`` extra columns.

    With ``null_logit`` set, every null expert gets that constant logit instead of a
    gate column (``extra_logits`` is then 0): the form for pretrained gates, where a
    real expert is kept only when its logit beats ``null_logit``.

    Example:
        >>> import torch
        >>> NullExperts(k=2, num_null=3).extra_logits, NullExperts(2, 3, 0.0).extra_logits
        (3, 0)
        >>> route = NullExperts(k=2, num_null=2, null_logit=0.0)
        >>> route(torch.tensor([[5.0, -5.0]])).num_assignments
        1
    """

    examples: ClassVar[tuple[str, ...]] = (
        "null_experts:k=2,num_null=2",  # null columns from the gate
        "null_experts:k=2,num_null=2,null_logit=0.0",  # a constant null logit (HF form)
    )
    sweeps: ClassVar[Mapping[str, SweepSpec]] = {
        # Null experts (AdaMoE): top-k over E real + num_null empty experts; a token's real
        # experts are those of its k picks that are not null, so k̄ <= k.
        "null_experts": SweepSpec(
            "k",
            {1.5: 2, 2.0: 3, 3.0: 4},
            fixed={"num_null": 4},
            source="aimed: k̄ ≈ k minus the null picks; measured k̄ is what counts",
        ),
    }
    host_syncs: ClassVar[int | None] = 1  # the nonzero that drops the null picks

    k: int
    num_null: int
    null_logit: float | None = None

    def __post_init__(self) -> None:
        check_int(self.k, "k", "null_experts", 1)
        check_int(self.num_null, "num_null", "null_experts", 1)
        if self.null_logit is not None and (
            isinstance(self.null_logit, bool) or not isinstance(self.null_logit, int | float)
        ):
            raise TypeError(f"null_experts: null_logit must be a float, got {self.null_logit!r}")

    @property
    def extra_logits(self) -> int:
        return self.num_null if self.null_logit is None else 0

    def __call__(self, logits: Tensor) -> Routing:
        if self.null_logit is not None:
            nulls = logits.new_full((logits.shape[0], self.num_null), float(self.null_logit))
            logits = torch.cat([logits, nulls], dim=-1)
        return null_experts(logits, self.k, self.num_null)
