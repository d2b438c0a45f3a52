"""Matrix-factorisation router (RouteLLM's ``mf``), generalised to ``M`` models.

RouteLLM scores a (query, model) pair as ``s(q, m) = w · (v_m ⊙ W z_q)`` — a learned
model embedding ``v_m`` times a projection of the query embedding — and trains
``sigmoid(s(q, a) − s(q, b))`` to predict which of two models wins (Bradley–Terry on
pairwise outcomes). With outcome tables every pair of models with different quality on
a query is one battle. We add a per-model bias and a pointwise term
``BCE(sigmoid(s), quality)`` so that ``sigmoid(s)`` reads as predicted quality, which the
``quality − λ·cost`` decision needs when more than two models compete.

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> t = OutcomeTable.from_rows(["add 1 2", "add 3 4", "paris france", "rome italy"],
    ...     ["math", "geo"], [[1, 0], [1, 0], [0, 1], [0, 1]], [[1, 1]] * 4)
    >>> MF(steps=20).fit(t).predict(["add 2 2"]).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from dynroute.llm.data import OutcomeTable
from dynroute.llm.routers._optim import fit_tensors, seeded
from dynroute.llm.routers.base import QueryRouter, register_query_router

__all__ = ["MF", "pairwise_loss"]


def pairwise_loss(scores: Tensor, quality: Tensor) -> Tensor:
    """Bradley–Terry loss over all model pairs of each query, ``scores``/``quality``
    ``[Q, M]``: ``−log sigmoid(s_a − s_b)`` for every pair where ``a`` scored higher."""
    diff = scores[:, :, None] - scores[:, None, :]  # [Q, M, M]
    wins = (quality[:, :, None] > quality[:, None, :]).float()
    n = wins.sum().clamp_min(1.0)
    return -(F.logsigmoid(diff) * wins).sum() / n


@register_query_router("mf")
@dataclasses.dataclass(eq=False)
class MF(QueryRouter):
    """Query–model matrix factorisation trained on pairwise wins plus pointwise quality."""

    quick_params: ClassVar[Mapping[str, Any]] = {"steps": 40}
    dim: int = 64
    steps: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-2
    pointwise: float = 1.0  # weight of the pointwise BCE term (0: pure RouteLLM loss)

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        assert z is not None
        y = torch.from_numpy(train.quality).float().clamp(0, 1)
        d, m = z.shape[1], y.shape[1]
        with seeded(self.seed):
            proj = (torch.randn(d, self.dim) / d**0.5).requires_grad_()
            model = torch.randn(m, self.dim).requires_grad_()
            head = (torch.randn(self.dim) / self.dim**0.5).requires_grad_()
        bias = torch.logit(y.mean(0).clamp(0.02, 0.98)).clone().requires_grad_()

        def loss() -> Tensor:
            s = self._scores(z)
            return pairwise_loss(s, y) + self.pointwise * F.binary_cross_entropy_with_logits(s, y)

        tensors = {"proj": proj, "model": model, "head": head, "bias": bias}
        fit_tensors(self, tensors, loss, self.weight_decay)

    def _scores(self, z: Tensor) -> Tensor:
        t = self.tensors
        q = z.float() @ t["proj"]  # [Q, dim]
        v = F.normalize(t["model"], dim=1)  # [M, dim]
        return (q[:, None, :] * v[None, :, :]) @ t["head"] + t["bias"]

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        assert z is not None
        with torch.no_grad():
            return torch.sigmoid(self._scores(z))
