"""Similarity-weighted ranking router (RouteLLM's ``sw_ranking``), for ``M`` models.

Every training query is a set of battles between models (``a`` beats ``b`` when its
quality is higher; a tie counts half to each). For a new query, each training query's
battles are weighted by ``exp(temperature · (sim − max sim))`` — the most similar
queries count most — and Bradley–Terry (Elo) ratings are fitted to the weighted battles.
The predicted quality of a model is its expected win rate against the rest of the pool.

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> t = OutcomeTable.from_rows(["add 1 2", "add 3 4", "paris france", "rome italy"],
    ...     ["math", "geo"], [[1, 0], [1, 0], [0, 1], [0, 1]], [[1, 1]] * 4)
    >>> p = SWRanking().fit(t).predict(["add 2 2", "paris"])
    >>> p.argmax(1).tolist()
    [0, 1]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from dynroute.llm.data import OutcomeTable
from dynroute.llm.routers.base import QueryRouter, register_query_router
from dynroute.llm.routers.knn import cosine_chunks

__all__ = ["SWRanking", "battles", "bradley_terry"]


def battles(quality: Tensor) -> Tensor:
    """``[Q, M, M]`` win scores: 1 where model a beat b on the query, 0.5 for a tie."""
    a, b = quality[:, :, None], quality[:, None, :]
    w = (a > b).float() + 0.5 * (a == b).float()
    return w * (1 - torch.eye(quality.shape[1]))


def bradley_terry(wins: Tensor, steps: int = 200, ridge: float = 0.05) -> Tensor:
    """Ratings ``[B, M]`` maximising ``Σ wins_ab log σ(r_a − r_b) − ridge/2 ‖r‖²`` for a
    batch of win matrices ``[B, M, M]`` (rows normalised so each pair weighs ≤ 1).

    Example:
        >>> bradley_terry(torch.tensor([[[0.0, 0.9], [0.1, 0.0]]])).argmax(1).tolist()
        [0]
    """
    m = wins.shape[-1]
    r = torch.zeros(wins.shape[0], m, dtype=wins.dtype)
    lr = 2.0 / m  # below 4 / (largest Hessian eigenvalue ≤ m / 2): plain ascent converges
    for _ in range(steps):
        p = torch.sigmoid(r[:, :, None] - r[:, None, :])  # [B, M, M] P(a beats b)
        grad = (wins - (wins + wins.transpose(1, 2)) * p).sum(2) - ridge * r
        r = r + lr * grad
    return r


@register_query_router("sw_ranking")
@dataclasses.dataclass(eq=False)
class SWRanking(QueryRouter):
    """Bradley–Terry ratings per query from similarity-weighted training battles."""

    temperature: float = 10.0
    steps: int = 200
    ridge: float = 0.05

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        assert z is not None
        w = battles(torch.from_numpy(train.quality).float())
        self.tensors = {"keys": z.float(), "battles": w.reshape(w.shape[0], -1)}

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        assert z is not None
        keys, flat = self.tensors["keys"], self.tensors["battles"]
        m = len(self.models)
        out = torch.empty(z.shape[0], m)
        for s, sims in cosine_chunks(z.float(), keys, chunk=512):
            weight = torch.exp(self.temperature * (sims - sims.max(1, keepdim=True).values))
            weight = weight / weight.sum(1, keepdim=True)
            wins = (weight @ flat).reshape(-1, m, m)  # [c, M, M], each pair sums to 1
            r = bradley_terry(wins, self.steps, self.ridge)
            p = torch.sigmoid(r[:, :, None] - r[:, None, :]) * (1 - torch.eye(m))
            out[s : s + len(r)] = p.sum(2) / max(m - 1, 1)
        return out
