"""The oracle: the adapter trained on the evaluated task, for every token (task known)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynroute.lora.library.layer import LibraryLinear
from dynroute.lora.library.routers.base import LibraryRouter, register_library_router
from dynroute.routing import Routing

TASK = "task"


@register_library_router("oracle")
@dataclass(frozen=True)
class Oracle(LibraryRouter):
    """Baseline: every token to one named adapter with weight 1.

    ``adapter="task"`` (the default) means the adapter named like the evaluated domain;
    on a domain no adapter was trained on it is not defined (held-out domains).

    Example:
        >>> Oracle().for_domain("docs", ["python", "docs"]), Oracle().for_domain("x", ["docs"])
        (Oracle(adapter='docs'), None)
    """

    adapter: str = TASK

    def __call__(self, layer: LibraryLinear, x: Tensor) -> Routing:
        e = layer.adapter_names.index(self.adapter)
        n = x.shape[0]
        token = torch.arange(n, device=x.device)
        probs = torch.zeros(n, layer.num_adapters, device=x.device)
        probs[:, e] = 1.0
        return Routing(token, torch.full_like(token, e), probs[:, e].clone(), probs,
                       layer.num_adapters)  # fmt: skip

    def check(self, layer: LibraryLinear) -> None:
        if self.adapter not in layer.adapter_names:
            raise ValueError(
                f"oracle: no adapter named {self.adapter!r}; the library holds "
                f"{layer.adapter_names} (oracle:adapter=NAME)"
            )

    def for_domain(self, domain: str, names: list[str]) -> LibraryRouter | None:
        if self.adapter != TASK:
            return self
        return Oracle(adapter=domain) if domain in names else None
