"""Null experts (AdaMoE, Zeng et al., 2024): top-k over real + zero-cost null experts."""

from __future__ import annotations

import torch
from torch import Tensor

from dynroute.routing.checks import as_router_logits, check_int
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
    return Routing.from_assignments(
        token[real],
        top_i[real],
        weight[real],
        probs[:, :e],
        e,
        null_probs=probs[:, e:],
        null_selected=(~real).sum(dim=-1),
    )
