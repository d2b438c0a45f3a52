"""Auxiliary router losses: load balance (Switch), z-loss (ST-MoE), dynamic (entropy)."""

from __future__ import annotations

import torch
from torch import Tensor

from dynroute.routing.types import Routing

LOAD_BALANCE_WEIGHT = 1e-2
"""α of "Harder Tasks Need More Experts"."""
DYNAMIC_WEIGHT = 1e-4
"""β of "Harder Tasks Need More Experts"."""


def load_balance_loss(routing: Routing) -> Tensor:
    """Switch load-balance loss that reads 1.0 at perfect balance for any k̄.

    ``E · Σ_i f_i · Q_i`` with f_i the fraction of assignments that go to expert i
    and Q_i the mean router probability of i. Using the fraction of *assignments*
    (not of tokens) divides by the mean experts per token, the analogue of
    dividing by k, so top-2 and top-p losses are on one scale. With null experts
    (AdaMoE) the sum runs over E + M columns and the M nulls share one bucket
    (their f is averaged), so balance is not forced among identical nulls.

    Args:
        routing: any Routing; gradient flows through ``routing.probs``.

    Returns:
        Scalar float32 tensor (0 for N = 0).

    Example:
        >>> import torch
        >>> from dynroute.routing import top_k
        >>> round(load_balance_loss(top_k(torch.zeros(8, 4), k=2)).item(), 4)
        1.0
    """
    counts = routing.expert_counts().to(routing.probs.dtype)
    probs = routing.probs
    if routing.null_probs is not None and routing.null_selected is not None:
        m = routing.null_probs.shape[1]
        null_total = routing.null_selected.sum().to(counts.dtype)
        counts = torch.cat([counts, (null_total / m).expand(m)])
        probs = torch.cat([probs, routing.null_probs], dim=1)
    if routing.num_tokens == 0:
        return probs.sum() * 0.0
    # no `if total == 0` (a host sync): with no assignment every f_i is 0 and so is the loss
    f = counts / counts.sum().clamp_min(1)
    q = probs.mean(dim=0)
    return probs.shape[1] * (f * q).sum()


def z_loss(logits: Tensor) -> Tensor:
    """Router z-loss (ST-MoE): mean over tokens of logsumexp(logits)², in float32.

    Args:
        logits: [N, E] router logits.

    Example:
        >>> import torch
        >>> round(z_loss(torch.zeros(3, 4)).item(), 4)  # log(4)^2
        1.9218
    """
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def dynamic_loss(routing: Routing) -> Tensor:
    """Dynamic loss of "Harder Tasks Need More Experts": mean router entropy.

    ``mean_t −Σ_i P_ti log P_ti`` over all router columns (nulls included).
    Minimizing it sharpens the distribution so top-p keeps fewer experts.

    Example:
        >>> import torch
        >>> from dynroute.routing import top_p
        >>> round(dynamic_loss(top_p(torch.zeros(2, 4), p=0.4)).item(), 4)  # log(4)
        1.3863
    """
    probs = routing.probs
    if routing.null_probs is not None:
        probs = torch.cat([probs, routing.null_probs], dim=1)
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    return -(probs * torch.log(probs.clamp_min(1e-20))).sum(dim=-1).mean()


def router_loss(
    routing: Routing,
    logits: Tensor,
    load_balance_weight: float = LOAD_BALANCE_WEIGHT,
    dynamic_weight: float = DYNAMIC_WEIGHT,
    z_loss_weight: float = 0.0,
    router: object = None,
) -> dict[str, Tensor]:
    """All auxiliary losses and their weighted sum (defaults: the paper's α, β).

    Args:
        router: the router that made ``routing``; when it has ``aux_loss(routing)``
            returning a tensor (a loss of its own, already weighted), that goes in as
            ``router`` and into ``total``.

    Returns:
        dict with ``load_balance``, ``dynamic``, ``z`` and ``total``
        (= α·load_balance + β·dynamic + z_weight·z [+ router]), each a scalar.

    Example:
        >>> import torch
        >>> from dynroute.routing import top_p
        >>> logits = torch.zeros(4, 8)
        >>> sorted(router_loss(top_p(logits, 0.4), logits))
        ['dynamic', 'load_balance', 'total', 'z']
    """
    lb = load_balance_loss(routing)
    dyn = dynamic_loss(routing)
    z = z_loss(logits)
    total = load_balance_weight * lb + dynamic_weight * dyn + z_loss_weight * z
    out = {"load_balance": lb, "dynamic": dyn, "z": z}
    own = getattr(router, "aux_loss", None)
    extra = own(routing) if callable(own) else None
    if extra is not None:  # the router's own term, already weighted (DynMoLE's entropy)
        out["router"], total = extra, total + extra
    return {**out, "total": total}
