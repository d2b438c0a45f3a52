"""MLP router: one hidden layer from the query embedding to every model's quality.

Trained with binary cross-entropy against the observed quality (0/1 correctness or a
score in [0, 1]), so outputs are predicted probabilities of a good answer.

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> t = OutcomeTable.from_rows(["add 1 2", "add 3 4", "paris france", "rome italy"],
    ...     ["math", "geo"], [[1, 0], [1, 0], [0, 1], [0, 1]], [[1, 1]] * 4)
    >>> p = MLP(steps=50).fit(t).predict(["add 2 2"])
    >>> p.shape, bool(((p >= 0) & (p <= 1)).all())
    (torch.Size([1, 2]), True)
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

__all__ = ["MLP"]


@register_query_router("mlp")
@dataclasses.dataclass(eq=False)
class MLP(QueryRouter):
    """``sigmoid(W2 · gelu(W1 · z + b1) + b2)`` ``[Q, M]``."""

    quick_params: ClassVar[Mapping[str, Any]] = {"steps": 40}
    hidden: int = 256
    steps: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-2

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        assert z is not None
        y = torch.from_numpy(train.quality).float().clamp(0, 1)
        d, m = z.shape[1], y.shape[1]
        with seeded(self.seed):
            w1 = (torch.randn(d, self.hidden) / d**0.5).requires_grad_()
            w2 = (torch.randn(self.hidden, m) / self.hidden**0.5).requires_grad_()
        b1 = torch.zeros(self.hidden, requires_grad=True)
        # Start the output bias at the base rates: the net then learns only the deviations.
        b2 = torch.logit(y.mean(0).clamp(0.02, 0.98)).clone().requires_grad_()

        def loss() -> Tensor:
            return F.binary_cross_entropy_with_logits(self._logits(z), y)

        fit_tensors(self, {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, loss, self.weight_decay)

    def _logits(self, z: Tensor) -> Tensor:
        t = self.tensors
        return F.gelu(z.float() @ t["w1"] + t["b1"]) @ t["w2"] + t["b2"]

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        assert z is not None
        with torch.no_grad():
            return torch.sigmoid(self._logits(z))
