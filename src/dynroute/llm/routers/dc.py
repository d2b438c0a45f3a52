"""RouterDC-style router: query and model embeddings trained with contrastive losses.

RouterDC fine-tunes a small text encoder together with one learnable embedding per model.
Its *sample–LLM* loss pulls a query towards the models that answered it best (top-k) and
pushes it from the worst (bottom-k); its *sample–sample* loss pulls together queries of
the same k-means cluster. Here the encoder is a two-layer MLP over the frozen query
embedding (no text encoder to fine-tune offline), and the routing score of model ``m`` is
``softmax_m(cos(E(q), k_m) / τ)`` — a preference, not a calibrated quality.

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> t = OutcomeTable.from_rows(["add 1 2", "add 3 4", "paris france", "rome italy"],
    ...     ["math", "geo"], [[1, 0], [1, 0], [0, 1], [0, 1]], [[1, 1]] * 4)
    >>> round(DC(steps=20, clusters=2).fit(t).predict(["add 2 2"]).sum().item(), 4)
    1.0
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

__all__ = ["DC", "kmeans", "sample_llm_loss", "sample_sample_loss"]


def kmeans(z: Tensor, k: int, steps: int = 20, seed: int = 0) -> Tensor:
    """Cluster labels ``[N]`` of rows ``z [N, d]`` (Lloyd's algorithm, seeded init)."""
    k = min(k, z.shape[0])
    g = torch.Generator().manual_seed(seed)
    centres = z[torch.randperm(z.shape[0], generator=g)[:k]].clone()
    labels = torch.zeros(z.shape[0], dtype=torch.long)
    for _ in range(steps):
        labels = torch.cdist(z, centres).argmin(1)
        for c in range(k):
            members = z[labels == c]
            if len(members):
                centres[c] = members.mean(0)
    return labels


def sample_llm_loss(sims: Tensor, quality: Tensor, top: int) -> Tensor:
    """RouterDC's sample–LLM loss. ``sims``/``quality`` ``[Q, M]``: each of the ``top``
    best models is a positive against the ``top`` worst as negatives; queries where all
    models scored the same carry no preference and are skipped."""
    m = quality.shape[1]
    k = max(1, min(top, m // 2))
    order = quality.argsort(dim=1, descending=True, stable=True)
    pos, neg = order[:, :k], order[:, m - k :]
    informative = quality.max(1).values > quality.min(1).values
    if not informative.any():
        return sims.sum() * 0.0
    s_pos = sims.gather(1, pos)[informative]  # [q, k]
    s_neg = sims.gather(1, neg)[informative]  # [q, k]
    # -log(e^{s+} / (e^{s+} + Σ e^{s-})) for every positive
    denom = torch.logaddexp(s_pos, torch.logsumexp(s_neg, 1, keepdim=True))
    return (denom - s_pos).mean()


def sample_sample_loss(e: Tensor, labels: Tensor, tau: float) -> Tensor:
    """InfoNCE over a batch ``e [B, d]`` (unit rows): same-cluster queries are positives."""
    sims = e @ e.T / tau
    eye = torch.eye(len(e), dtype=torch.bool)
    sims = sims.masked_fill(eye, -torch.inf)
    same = (labels[:, None] == labels[None, :]) & ~eye
    has = same.any(1)
    if not has.any():
        return e.sum() * 0.0
    log_all = torch.logsumexp(sims, 1)
    log_pos = torch.logsumexp(sims.masked_fill(~same, -torch.inf), 1)
    return (log_all - log_pos)[has].mean()


@register_query_router("dc")
@dataclasses.dataclass(eq=False)
class DC(QueryRouter):
    """Dual-contrastive query–model embedding router."""

    quick_params: ClassVar[Mapping[str, Any]] = {"steps": 40, "clusters": 4}
    dim: int = 64
    hidden: int = 256
    tau: float = 0.2
    top: int = 3
    clusters: int = 16
    sample_weight: float = 1.0  # weight of the sample–sample loss
    batch: int = 512
    steps: int = 300
    lr: float = 3e-3

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        assert z is not None
        y = torch.from_numpy(train.quality).float()
        z = z.float()
        d, m = z.shape[1], y.shape[1]
        with seeded(self.seed) as g:
            labels = kmeans(z, self.clusters, seed=self.seed)
            w1 = (torch.randn(d, self.hidden) / d**0.5).requires_grad_()
            w2 = (torch.randn(self.hidden, self.dim) / self.hidden**0.5).requires_grad_()
            keys = torch.randn(m, self.dim).requires_grad_()
            b1 = torch.zeros(self.hidden, requires_grad=True)

            def loss() -> Tensor:
                e = self._encode(z)
                sims = e @ F.normalize(self.tensors["keys"], dim=1).T / self.tau
                idx = torch.randperm(len(z), generator=g)[: self.batch]
                return sample_llm_loss(sims, y, self.top) + self.sample_weight * (
                    sample_sample_loss(e[idx], labels[idx], self.tau)
                )

            fit_tensors(self, {"w1": w1, "b1": b1, "w2": w2, "keys": keys}, loss)

    def _encode(self, z: Tensor) -> Tensor:
        t = self.tensors
        return F.normalize(F.gelu(z @ t["w1"] + t["b1"]) @ t["w2"], dim=1)

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        assert z is not None
        with torch.no_grad():
            e = self._encode(z.float())
            return torch.softmax(e @ F.normalize(self.tensors["keys"], dim=1).T / self.tau, 1)
