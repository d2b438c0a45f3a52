"""Cascade (FrugalGPT-style, post-generation): call models cheapest first and stop at
the first whose answer is predicted good enough.

The chain is the training set's cost–quality frontier (the models on the zero-router
hull), cheapest first. A scorer — any registered query router (a name or a spec such as
``knn:k=5``), ``knn`` by default — predicts P(good answer | query, model); the cascade
stops at the first model whose prediction reaches ``threshold`` and always accepts the
last. A cascade pays for every model it
called. Our scorer sees only the query, not the answer (the tables hold no answers), so
this is a pessimistic cascade: an answer-aware scorer can only do better.

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> t = OutcomeTable.from_rows(["add 1 2", "add 3 4", "paris france", "rome italy"],
    ...     ["small", "big"], [[1, 1], [1, 1], [0, 1], [0, 1]], [[1, 5]] * 4)
    >>> c = Cascade(threshold=0.5).fit(t)
    >>> c.chain
    ('small', 'big')
    >>> c.route(["add 2 2"])
    ['small']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dynroute.llm.data import OutcomeTable
from dynroute.llm.embed import Embedder
from dynroute.llm.metrics import upper_hull
from dynroute.llm.routers.base import QueryRouter, make_query_router, register_query_router

__all__ = ["Cascade", "run_cascade"]


def run_cascade(
    pred: Tensor, cost: Tensor, chain: Sequence[int], threshold: float
) -> tuple[Tensor, Tensor]:
    """Stopping model ``[Q]`` and total paid cost ``[Q]`` of a cascade over ``chain``.

    Example:
        >>> pred = torch.tensor([[0.9, 0.9], [0.1, 0.9]]); cost = torch.tensor([[1., 4.]] * 2)
        >>> stop, paid = run_cascade(pred, cost, [0, 1], 0.5)
        >>> stop.tolist(), paid.tolist()
        ([0, 1], [1.0, 5.0])
    """
    chain_t = torch.as_tensor(list(chain))
    ok = pred[:, chain_t] >= threshold  # [Q, K]
    ok[:, -1] = True  # the last model's answer is always accepted
    step = ok.float().argmax(1)  # first accepted position
    paid = cost[:, chain_t].double().cumsum(1).gather(1, step[:, None]).squeeze(1)
    return chain_t[step], paid


@register_query_router("cascade")
@dataclasses.dataclass(eq=False)
class Cascade(QueryRouter):
    """Cheapest first; escalate while the scorer's predicted quality < ``threshold``."""

    knob = "threshold"
    scorer: str = "knn"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        self.chain_idx: list[int] = []
        self.base: QueryRouter | None = None

    @property
    def chain(self) -> tuple[str, ...]:
        return tuple(self.models[i] for i in self.chain_idx)

    def fit(self, train: OutcomeTable, embedder: Embedder | None = None) -> Cascade:
        super().fit(train, embedder)
        return self

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        points = train.single_model_points()
        hull = upper_hull([(c, q) for _, c, q in points])
        self.chain_idx = sorted(
            (
                j
                for j, (_, c, q) in enumerate(points)
                if any(np.isclose(c, hc) and np.isclose(q, hq) for hc, hq in hull)
            ),
            key=lambda j: points[j][1],
        )
        self.base = make_query_router(self.scorer, seed=self.seed)
        self.base.fit(train, self.embedder)
        self.tensors = {f"base.{k}": v for k, v in self.base.tensors.items()}

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        assert self.base is not None
        return self.base.predict(queries)

    def predict_table(self, table: OutcomeTable) -> Tensor:
        assert self.base is not None
        return self.base.predict_table(table)

    def route(self, queries: Sequence[str], lam: float | None = None) -> list[str]:
        """Where the cascade is predicted to stop (``lam``: a threshold override)."""
        stop, _ = run_cascade(
            self.predict(queries),
            self.estimate_cost(queries),
            self.chain_idx,
            self.threshold if lam is None else lam,
        )
        return [self.models[i] for i in stop.tolist()]

    def sweep(self, table: OutcomeTable, n: int = 64) -> list[dict[str, float]]:
        """Points over thresholds (reported under ``"lambda"``, the sweep's knob)."""
        table = table.aligned_to(self.models)
        pred = self.predict_table(table).double()
        quality, cost = torch.from_numpy(table.quality), torch.from_numpy(table.cost)
        qs = torch.quantile(
            pred[:, self.chain_idx].flatten(), torch.linspace(0, 1, n, dtype=torch.float64)
        )
        rows = torch.arange(len(pred))
        out = []
        for t in sorted({0.0, 1.0 + 1e-9, *qs.tolist()}):
            stop, paid = run_cascade(pred, cost, self.chain_idx, t)
            out.append(
                {
                    "lambda": t,
                    "cost": float(paid.mean()),
                    "quality": float(quality[rows, stop].mean()),
                }
            )
        return out

    def config(self) -> dict[str, Any]:
        return {
            "chain": self.chain_idx,
            "base": self.base.config() if self.base is not None else {},
        }

    def load_config(self, config: dict[str, Any]) -> None:
        self.chain_idx = list(config["chain"])
        base = make_query_router(self.scorer, seed=self.seed)
        base.models, base.embedder, base.cost_coef = self.models, self.embedder, self.cost_coef
        base.tensors = {k[5:]: v for k, v in self.tensors.items() if k.startswith("base.")}
        base.load_config(config["base"])
        self.base = base
