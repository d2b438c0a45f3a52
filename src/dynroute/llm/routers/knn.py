"""kNN router (RouterBench's kNN): mean outcome of the k most similar training queries.

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> t = OutcomeTable.from_rows(["add 1 2", "add 3 4", "paris france", "rome italy"],
    ...     ["math", "geo"], [[1, 0], [1, 0], [0, 1], [0, 1]], [[1, 1]] * 4)
    >>> KNN(k=1).fit(t).predict(["add 2 2"]).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from dynroute.llm.data import OutcomeTable
from dynroute.llm.routers.base import QueryRouter, register_query_router

__all__ = ["KNN", "cosine_chunks"]


def cosine_chunks(z: Tensor, keys: Tensor, chunk: int = 1024):
    """Yield ``(start, sims [c, N])`` for unit rows ``z [Q, d]`` against ``keys [N, d]``
    in chunks, so a big test set never builds the whole ``[Q, N]`` matrix."""
    for s in range(0, z.shape[0], chunk):
        yield s, z[s : s + chunk] @ keys.T


@register_query_router("knn")
@dataclasses.dataclass(eq=False)
class KNN(QueryRouter):
    """Predicted quality = mean quality of the ``k`` nearest training queries (cosine)."""

    k: int = 20

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        assert z is not None
        self.tensors = {"keys": z.float(), "quality": torch.from_numpy(train.quality).float()}

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        assert z is not None
        keys, quality = self.tensors["keys"], self.tensors["quality"]
        k = min(self.k, keys.shape[0])
        out = torch.empty(z.shape[0], quality.shape[1])
        for s, sims in cosine_chunks(z.float(), keys):
            idx = sims.topk(k, dim=1).indices  # [c, k]
            out[s : s + len(idx)] = quality[idx].mean(1)
        return out
