"""DynMoLE's hybrid router: Tsallis entropy decides soft (all experts) or top-p (sparse).

From the paper (DynMoLE, mixture of LoRA experts), as summarised in REFERENCES.md: the
router's uncertainty is the Tsallis entropy ``S_q(P) = (1 - Σ_i P_i^q) / (q - 1)`` with
q ≈ 1.1, normalised to [0, 1] by its maximum ``(1 - E^(1-q)) / (q - 1)`` (the uniform
distribution). A token whose normalised entropy exceeds a threshold τ is uncertain and
uses *all* experts with soft weights; otherwise a top-p mask with a top-k floor picks its
experts. The auxiliary loss adds the entropy (minimising it makes the router confident).

Our choices (not from the paper): the default τ = 0.9, p = 0.75 and floor k = 1; sparse
weights are renormalised over the kept experts (``normalize=True``) so both branches sum
to 1; the entropy term's weight ``entropy_weight`` = 1e-3 rides on the router so any
layer that calls ``router.aux_loss(routing)`` adds it (``LoRAMoELinear`` does) next to the
load-balance loss every dynroute layer already adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from dynroute.routing.checks import as_router_logits, check_int
from dynroute.routing.registry import Router, register_router
from dynroute.routing.top_p import check_p, top_p_mask
from dynroute.routing.types import Routing

__all__ = ["DynMoLE", "dynmole", "dynmole_loss", "tsallis_entropy"]


def tsallis_entropy(probs: Tensor, q: float = 1.1, normalized: bool = True) -> Tensor:
    """Tsallis entropy per row of ``probs [N, E]`` -> [N], optionally divided by its maximum.

    ``S_q = (1 - Σ P^q) / (q - 1)``; q → 1 is Shannon's entropy (used when q == 1). The
    maximum over distributions on E outcomes is reached at the uniform one; with E = 1 the
    entropy is 0 and so is the normalised value.

    Example:
        >>> h = tsallis_entropy(torch.tensor([[0.25] * 4, [1.0, 0, 0, 0]]))
        >>> [round(v, 4) for v in h.tolist()]
        [1.0, 0.0]
    """
    probs = probs.float()
    e = probs.shape[-1]
    if q == 1.0:
        raw = -(probs * torch.log(probs.clamp_min(1e-20))).sum(dim=-1)
        top = torch.log(torch.tensor(float(e)))
    else:
        raw = (1.0 - probs.clamp_min(0).pow(q).sum(dim=-1)) / (q - 1.0)
        top = torch.tensor((1.0 - float(e) ** (1.0 - q)) / (q - 1.0))
    if not normalized:
        return raw
    if e == 1:
        return torch.zeros_like(raw)
    return (raw / top).clamp(0.0, 1.0)


def dynmole(
    logits: Tensor,
    q: float = 1.1,
    threshold: float = 0.9,
    p: float = 0.75,
    k: int = 1,
    normalize: bool = True,
) -> Routing:
    """Route each token softly to all experts when uncertain, else top-p with a top-k floor.

    Args:
        logits: [N, E] router logits.
        q: Tsallis index (> 0); threshold: τ in [0, 1] on the normalised entropy;
        p: top-p threshold of the sparse branch; k: minimum experts of the sparse branch
            (capped at E); normalize: renormalise sparse weights over the kept experts.

    Returns:
        Routing; ``weight`` are the softmax probabilities (soft branch) or the kept,
        optionally renormalised, probabilities (sparse branch).

    Example:
        >>> flat, peaked = torch.zeros(1, 4), torch.tensor([[6.0, 0.0, 0.0, 0.0]])
        >>> dynmole(flat).experts_per_token().tolist(), dynmole(peaked).experts_per_token().tolist()
        ([4], [1])
    """
    logits = as_router_logits(logits, "dynmole")
    e = logits.shape[1]
    probs = torch.softmax(logits, dim=-1)
    detached = probs.detach()
    entropy = tsallis_entropy(detached, q)
    sparse = top_p_mask(detached, float(p))
    floor = min(k, e)
    if floor > 1:
        top = torch.topk(detached, floor, dim=-1).indices
        sparse = sparse | torch.zeros_like(sparse).scatter(1, top, True)
    soft = (entropy > threshold)[:, None]
    mask = sparse | soft  # soft tokens keep every expert
    weights = probs
    if normalize:
        kept = probs * mask
        sums = kept.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        # soft tokens already sum to 1 over all experts; divide the sparse ones
        weights = torch.where(soft, probs, kept / sums)
    return Routing.from_mask(mask, weights, probs)


def dynmole_loss(routing: Routing, q: float = 1.1) -> Tensor:
    """DynMoLE's entropy term: the mean normalised Tsallis entropy of the router, a scalar.

    Add it (times a weight) to the load-balance loss; lower entropy means sharper,
    sparser routing.

    Example:
        >>> round(dynmole_loss(dynmole(torch.zeros(3, 4))).item(), 4)
        1.0
    """
    if routing.num_tokens == 0:
        return routing.probs.sum() * 0.0
    return tsallis_entropy(routing.probs, q).mean()


@register_router("dynmole")
@dataclass(frozen=True)
class DynMoLE(Router):
    """:func:`dynmole` as a router; ``aux_loss(routing)`` is its weighted entropy term.

    Example:
        >>> from dynroute.routing import make_router
        >>> router = make_router("dynmole:threshold=0.8,p=0.6,k=2")
        >>> router(torch.zeros(2, 4)).experts_per_token().tolist()
        [4, 4]
        >>> router.describe()
        'dynmole(threshold=0.8, p=0.6, k=2)'
    """

    examples: ClassVar[tuple[str, ...]] = ("dynmole", "dynmole:threshold=0.8,p=0.6,k=2")
    host_syncs: ClassVar[int | None] = 1  # the nonzero of the mask

    q: float = 1.1
    threshold: float = 0.9
    p: float = 0.75
    k: int = 1
    normalize: bool = True
    entropy_weight: float = 1e-3

    def __post_init__(self) -> None:
        if isinstance(self.q, bool) or not isinstance(self.q, int | float) or self.q <= 0:
            raise ValueError(f"dynmole: q must be > 0, got {self.q}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"dynmole: threshold must be in [0, 1], got {self.threshold}")
        try:
            check_p(self.p)
        except ValueError:
            raise ValueError(f"dynmole: p must be in (0, 1], got {self.p}") from None
        check_int(self.k, "k", "dynmole", 1)
        if self.entropy_weight < 0:
            raise ValueError(f"dynmole: entropy_weight must be >= 0, got {self.entropy_weight}")

    def __call__(self, logits: Tensor) -> Routing:
        return dynmole(logits, self.q, self.threshold, self.p, self.k, self.normalize)

    def aux_loss(self, routing: Routing) -> Tensor:
        """``entropy_weight`` · :func:`dynmole_loss`, added by layers that support it."""
        return self.entropy_weight * dynmole_loss(routing, self.q)
