"""The uniform merge: every adapter, weight 1/E (the same function as averaging the ΔW)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynroute.lora.library.layer import LibraryLinear
from dynroute.lora.library.routers.base import LibraryRouter, register_library_router
from dynroute.routing import Routing


@register_library_router("uniform")
@dataclass(frozen=True)
class Uniform(LibraryRouter):
    """Baseline: ``base(x) + (1/E) Σ_e ΔW_e x``, a merge of all adapters with equal weights.

    Example:
        >>> Uniform().to_dict()
        {'name': 'uniform'}
    """

    def __call__(self, layer: LibraryLinear, x: Tensor) -> Routing:
        n, e = x.shape[0], layer.num_adapters
        probs = torch.full((n, e), 1.0 / e, device=x.device)
        token = torch.arange(n, device=x.device).repeat(e)
        expert = torch.arange(e, device=x.device).repeat_interleave(n)
        return Routing(token, expert, probs.reshape(-1), probs, e)
