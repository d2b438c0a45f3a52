"""Dynamic-k over the library: as many adapters as a token's scores call for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dynroute.lora.library.layer import LibraryLinear
from dynroute.lora.library.routers.base import (
    LibraryRouter,
    arrow_scores,
    phatgoose_scores,
    register_library_router,
)
from dynroute.lora.library.routers.phatgoose import check_gates
from dynroute.routing import Routing

SCORES = {"arrow": arrow_scores, "phatgoose": phatgoose_scores}


@register_library_router("dynamic_k")
@dataclass(frozen=True)
class DynamicK(LibraryRouter):
    """Top-p or threshold over Arrow's or PHATGOOSE's scores: easy tokens use fewer adapters.

    Selection is scale-free: ``probs = softmax(z)`` over all E adapters with ``z`` the
    token's scores standardised (zero mean, unit deviation over the adapters), because
    Arrow's ``|⟨h, v⟩|`` grows with ``|h|`` and differs by layer. With ``top_p`` a token
    keeps its most probable adapters until their mass reaches p; with ``threshold`` set
    (instead of top_p) every adapter whose probability is at least the threshold (the most
    probable always). At
    most ``max_k`` (0: no cap). Weights: ``softmax(score / temperature)`` over the kept
    adapters, Arrow's and PHATGOOSE's rule, so ``top_p=1, max_k=k`` is their top-k.

    Example:
        >>> DynamicK(scores="phatgoose", top_p=0.8).to_dict()["scores"]
        'phatgoose'
    """

    scores: str = "arrow"
    top_p: float = 0.9
    threshold: float | None = None
    max_k: int = 0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.scores not in SCORES:
            raise ValueError(f"dynamic_k: scores={self.scores!r}; choose one of {sorted(SCORES)}")
        for name in ("top_p", "threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 < float(value) <= 1.0:
                raise ValueError(f"dynamic_k: {name} must be in (0, 1], got {value}")

    def __call__(self, layer: LibraryLinear, x: Tensor) -> Routing:
        scores = SCORES[self.scores](layer, x).float()
        n, e = scores.shape
        z = (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-6)
        probs = torch.softmax(z if e > 1 else scores, dim=1)
        # only the first max_k can be kept: a top-k, not a sort over the whole library
        ordered, order = torch.topk(probs, min(self.max_k or e, e), dim=1)
        if self.threshold is None:
            keep = (ordered.cumsum(1) - ordered) < self.top_p  # mass before it is below p
        else:
            keep = ordered >= self.threshold
            keep[:, 0] = True
        picked = torch.gather(scores, 1, order) / self.temperature
        weight = torch.softmax(picked.masked_fill(~keep, float("-inf")), dim=1)
        token = torch.arange(n, device=x.device)[:, None].expand_as(order)
        return Routing.from_assignments(token[keep], order[keep], weight[keep], probs, e)

    def check(self, layer: LibraryLinear) -> None:
        if self.scores == "phatgoose":
            check_gates(layer)

    @classmethod
    def evaluation_specs(cls, num_adapters: int, top_k: int, gates: bool) -> list[dict[str, Any]]:
        sources = ["arrow", "phatgoose"] if gates else ["arrow"]
        k = min(top_k, num_adapters)
        return [
            {"name": cls.name, "scores": s, "top_p": p, "max_k": k}
            for s in sources
            for p in (0.5, 0.7)
        ]
