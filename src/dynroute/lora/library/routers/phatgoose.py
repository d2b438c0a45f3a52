"""PHATGOOSE: per-adapter sigmoid gates trained after each adapter, top-k by affinity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dynroute.lora.library.layer import LibraryLinear
from dynroute.lora.library.routers.base import (
    LibraryRouter,
    phatgoose_scores,
    register_library_router,
    routing_from_top_k,
)
from dynroute.routing import Routing


@register_library_router("phatgoose")
@dataclass(frozen=True)
class Phatgoose(LibraryRouter):
    """PHATGOOSE (Muqeeth et al. 2024, "Learning to Route Among Specialized Experts for
    Zero-Shot Generalization").

    Each adapter's contributor trains, after the adapter and with it frozen, one gate
    vector ``g`` per adapted linear so that ``σ(⟨g, x⟩)`` scales the adapter's output
    (:func:`~dynroute.lora.library.train_phatgoose_gates`). At inference a token's affinity
    with adapter e is ``std(x) · std(g_e) / √d`` (both standardized); it goes to the
    ``top_k`` adapters (the paper's k = 2) with weights ``softmax(affinity / temperature)``.

    Example:
        >>> Phatgoose().to_dict()
        {'name': 'phatgoose', 'top_k': 2, 'temperature': 1.0}
    """

    top_k: int = 2
    temperature: float = 1.0

    def __call__(self, layer: LibraryLinear, x: Tensor) -> Routing:
        return routing_from_top_k(phatgoose_scores(layer, x), self.top_k, self.temperature)

    def check(self, layer: LibraryLinear) -> None:
        super().check(layer)
        check_gates(layer)

    @classmethod
    def evaluation_specs(cls, num_adapters: int, top_k: int, gates: bool) -> list[dict[str, Any]]:
        if not gates:
            return []
        return [{"name": cls.name, "top_k": k} for k in sorted({1, min(top_k, num_adapters)})]


def check_gates(layer: LibraryLinear) -> None:
    """Raise naming the adapters without a PHATGOOSE gate, and how to train one."""
    trained = layer.gate_trained.tolist()
    missing = [n for n, ok in zip(layer.adapter_names, trained, strict=True) if not ok]
    if missing:
        raise ValueError(
            f"phatgoose: adapter(s) {missing} have no gate; train them with "
            "dynroute.lora.library.train_phatgoose_gates (or `dynroute lora library build`)"
        )
