"""Reference routers: random, best single model, and the oracle (upper bound).

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> t = OutcomeTable.from_rows(["a", "b"], ["m0", "m1"], [[1, 0], [0, 1]], [[1, 2]] * 2)
    >>> Oracle().fit(t).predict_table(t).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dynroute.llm.data import OutcomeTable
from dynroute.llm.routers.base import QueryRouter, register_query_router

__all__ = ["BestSingle", "Oracle", "RandomRouter"]


@register_query_router("random")
@dataclasses.dataclass(eq=False)
class RandomRouter(QueryRouter):
    """Uniform random scores per (query, model), a deterministic hash of both and the
    seed — so the same query always gets the same scores, before and after save/load."""

    uses_embedding = False

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        pass

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        out = np.empty((len(queries), len(self.models)), dtype=np.float32)
        for i, q in enumerate(queries):
            digest = hashlib.sha256(f"{self.seed}\x00{q}".encode()).digest()
            words = np.frombuffer(digest, dtype=np.uint32)
            out[i] = (
                words[np.arange(len(self.models)) % len(words)]
                ^ np.arange(len(self.models), dtype=np.uint32) * 2654435761
            ) / 2**32
        return torch.from_numpy(out)


@register_query_router("best_single")
@dataclasses.dataclass(eq=False)
class BestSingle(QueryRouter):
    """Every query gets the training mean quality of each model: the sweep visits the
    single models that are best at each λ (a staircase on the zero router)."""

    uses_embedding = False

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        self.tensors["mean"] = torch.from_numpy(train.quality.mean(0)).float()

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        return self.tensors["mean"].expand(len(queries), -1).clone()


@register_query_router("oracle")
@dataclasses.dataclass(eq=False)
class Oracle(QueryRouter):
    """The upper bound: on an evaluation table it reads the true outcomes. For other
    queries it recalls the outcomes it was fitted on, else the training mean."""

    uses_embedding = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.index: dict[str, int] = {}

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        first: dict[str, int] = {}
        for i, q in enumerate(train.queries):
            first.setdefault(q, i)  # a repeated query keeps its first outcome
        self.index = {q: j for j, q in enumerate(first)}
        self.tensors["quality"] = torch.from_numpy(train.quality[list(first.values())]).float()
        self.tensors["mean"] = self.tensors["quality"].mean(0)

    def predict_table(self, table: OutcomeTable) -> Tensor:
        return torch.from_numpy(table.quality).float()

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        rows = [
            self.tensors["quality"][self.index[q]] if q in self.index else self.tensors["mean"]
            for q in queries
        ]
        return torch.stack(rows) if rows else torch.empty(0, len(self.models))

    def config(self) -> dict[str, Any]:
        return {"queries": sorted(self.index, key=self.index.__getitem__)}

    def load_config(self, config: dict[str, Any]) -> None:
        self.index = {q: i for i, q in enumerate(config["queries"])}
