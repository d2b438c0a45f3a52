"""Arrow: training-free, tokens to the top-k adapters by ``|⟨h, prototype⟩|`` (= peft's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dynroute.lora.library.layer import LibraryLinear
from dynroute.lora.library.routers.base import (
    LibraryRouter,
    arrow_scores,
    register_library_router,
    routing_from_top_k,
)
from dynroute.routing import Routing


@register_library_router("arrow")
@dataclass(frozen=True)
class Arrow(LibraryRouter):
    """Arrow routing (Ostapenko et al. 2024), as peft's ``ArrowConfig``.

    Each adapter's prototype is the top right-singular vector of its ``ΔW`` in this
    layer; a token goes to the ``top_k`` adapters most aligned with it, sign ignored, with
    weights ``softmax(score / temperature)`` over those. peft's defaults: top_k 3,
    temperature 1.

    Example:
        >>> Arrow(top_k=2).to_dict()
        {'name': 'arrow', 'top_k': 2, 'temperature': 1.0}
    """

    top_k: int = 3
    temperature: float = 1.0

    def __call__(self, layer: LibraryLinear, x: Tensor) -> Routing:
        return routing_from_top_k(arrow_scores(layer, x), self.top_k, self.temperature)

    @classmethod
    def evaluation_specs(cls, num_adapters: int, top_k: int, gates: bool) -> list[dict[str, Any]]:
        return [{"name": cls.name, "top_k": k} for k in sorted({1, min(top_k, num_adapters)})]
