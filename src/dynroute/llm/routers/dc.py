"""RouterDC-style router: query and model embeddings trained with contrastive losses.

RouterDC fine-tunes a small text encoder together with one learnable embedding per model.
Its *sample–LLM* loss pulls a query towards the models that answered it best (top-k) and
pushes it from the worst (bottom-k); its *sample–sample* loss pulls together queries of
the same k-means cluster. Here the encoder is a two-layer MLP over the frozen query
embedding (``encoder="frozen"``, the default: the router's shared embedder), or, with
``encoder="finetune"``, the same MLP over WordLlama's static token table (mean-pooled as
WordLlama does) whose rows are trained too, end to end on minibatches, with an L2 pull
(``pull``) toward the shipped rows. The routing score of model ``m`` is
``softmax_m(cos(E(q), k_m) / τ)`` — a preference, not a calibrated quality.

A fine-tuned router saves only the change of the rows of the tokens seen in training
(``vocab``, int32, and ``delta``, float16) with its MLP; the shipped rows are read from the
installed ``wordllama`` wheel (offline) when the router predicts.

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> t = OutcomeTable.from_rows(["add 1 2", "add 3 4", "paris france", "rome italy"],
    ...     ["math", "geo"], [[1, 0], [1, 0], [0, 1], [0, 1]], [[1, 1]] * 4)
    >>> round(DC(steps=20, clusters=2).fit(t).predict(["add 2 2"]).sum().item(), 4)
    1.0
    >>> ft = DC(steps=20, clusters=2, encoder="finetune").fit(t)
    >>> ft.tensors["delta"].shape == (len(ft.tensors["vocab"]), 256)
    True
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from dynroute.llm.data import OutcomeTable
from dynroute.llm.embed import WordLlamaEmbedder
from dynroute.llm.routers._optim import fit_tensors, seeded
from dynroute.llm.routers.base import QueryRouter, register_query_router

__all__ = ["DC", "ENCODERS", "TokenBags", "kmeans", "sample_llm_loss", "sample_sample_loss"]

#: Values of :attr:`DC.encoder`.
ENCODERS = ("frozen", "finetune")


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


@functools.cache
def _wordllama() -> WordLlamaEmbedder:
    # One shipped table and tokenizer per process: loading takes seconds, both are read-only.
    return WordLlamaEmbedder(dim=256)


@dataclasses.dataclass
class TokenBags:
    """Queries as bags of token ids in CSR form: ``ids [T]`` (row ids of some table),
    ``offsets [Q]`` (where each query starts) and ``lengths [Q]``.

    Example:
        >>> b = TokenBags.of([[3, 1], [], [2]])
        >>> b.pool(torch.eye(4)).tolist()
        [[0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
        >>> b.take(torch.tensor([2, 0])).ids.tolist()
        [2, 3, 1]
    """

    ids: Tensor
    offsets: Tensor
    lengths: Tensor

    @classmethod
    def of(cls, bags: Sequence[Sequence[int]]) -> TokenBags:
        lengths = torch.tensor([len(b) for b in bags], dtype=torch.long)
        offsets = torch.cumsum(lengths, 0) - lengths
        ids = torch.tensor([t for b in bags for t in b], dtype=torch.long)
        return cls(ids, offsets, lengths)

    def take(self, rows: Tensor) -> TokenBags:
        """The bags of queries ``rows`` (in that order)."""
        lengths = self.lengths[rows]
        offsets = torch.cumsum(lengths, 0) - lengths
        # position t of the new flat array reads old position starts[bag(t)] + (t - offset)
        shift = torch.repeat_interleave(self.offsets[rows] - offsets, lengths)
        return TokenBags(self.ids[torch.arange(int(lengths.sum())) + shift], offsets, lengths)

    def pool(self, table: Tensor) -> Tensor:
        """``[Q, dim]`` mean of each bag's rows of ``table`` (zeros for an empty bag)."""
        return F.embedding_bag(self.ids, table, self.offsets, mode="mean")


@register_query_router("dc")
@dataclasses.dataclass(eq=False)
class DC(QueryRouter):
    """Dual-contrastive query–model embedding router (``encoder``: ``"frozen"`` reads the
    shared embedder's vectors; ``"finetune"`` trains WordLlama's token rows as well)."""

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
    encoder: str = "frozen"
    pull: float = 1e-3  # finetune: weight of Σ‖row − shipped row‖² over the trained rows
    table_lr: float = 1.0  # finetune: the rows' step as a multiple of lr (0: keep them)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder not in ENCODERS:
            raise ValueError(
                f"dc: encoder={self.encoder!r} is not one of {', '.join(ENCODERS)} "
                "(e.g. dc:encoder=finetune)"
            )
        self._table: Tensor | None = None  # finetune: the full table with trained rows

    @property  # type: ignore[override]
    def uses_embedding(self) -> bool:  # a fine-tuned encoder reads the text itself
        return self.encoder == "frozen"

    def _head(self, d: int, m: int) -> dict[str, Tensor]:
        """Fresh MLP and model keys (draws from the seeded global RNG, in this order)."""
        w1 = (torch.randn(d, self.hidden) / d**0.5).requires_grad_()
        w2 = (torch.randn(self.hidden, self.dim) / self.hidden**0.5).requires_grad_()
        keys = torch.randn(m, self.dim).requires_grad_()
        b1 = torch.zeros(self.hidden, requires_grad=True)
        return {"w1": w1, "b1": b1, "w2": w2, "keys": keys}

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        if self.encoder == "finetune":
            self._fit_finetune(train)
            return
        assert z is not None
        y = torch.from_numpy(train.quality).float()
        z = z.float()
        d, m = z.shape[1], y.shape[1]
        with seeded(self.seed) as g:
            labels = kmeans(z, self.clusters, seed=self.seed)
            head = self._head(d, m)

            def loss() -> Tensor:
                e = self._encode(z)
                sims = e @ F.normalize(self.tensors["keys"], dim=1).T / self.tau
                idx = torch.randperm(len(z), generator=g)[: self.batch]
                return sample_llm_loss(sims, y, self.top) + self.sample_weight * (
                    sample_sample_loss(e[idx], labels[idx], self.tau)
                )

            fit_tensors(self, head, loss)

    def _fit_finetune(self, train: OutcomeTable) -> None:
        """Train the MLP, the keys and the rows of the tokens in ``train`` (minibatches of
        ``batch`` queries, both losses on each), pulled toward the shipped rows."""
        words = _wordllama()
        bags = words.token_ids(train.queries)
        vocab = torch.tensor(sorted({t for b in bags for t in b}), dtype=torch.long)
        local = {t: i for i, t in enumerate(vocab.tolist())}
        train_bags = TokenBags.of([[local[t] for t in b] for b in bags])
        shipped = words.table()[vocab]  # [U, 256]
        y = torch.from_numpy(train.quality).float()
        self._table = None
        with seeded(self.seed) as g:
            labels = kmeans(F.normalize(train_bags.pool(shipped), dim=1), self.clusters, self.seed)
            head = self._head(shipped.shape[1], y.shape[1])
            head["delta"] = torch.zeros_like(shipped, requires_grad=True)

            def loss() -> Tensor:
                # rows = shipped + table_lr·δ: Adam's step on δ is lr, so on the rows table_lr·lr
                delta = self.table_lr * self.tensors["delta"]
                idx = torch.randperm(len(y), generator=g)[: self.batch]
                e = self._encode(F.normalize(train_bags.take(idx).pool(shipped + delta), dim=1))
                sims = e @ F.normalize(self.tensors["keys"], dim=1).T / self.tau
                return (
                    sample_llm_loss(sims, y[idx], self.top)
                    + self.sample_weight * sample_sample_loss(e, labels[idx], self.tau)
                    + self.pull * delta.pow(2).sum()
                )

            fit_tensors(self, head, loss)
        # Saved as float16 (half the bytes): predict with the same rounded rows, so a loaded
        # router predicts exactly what this one does.
        self.tensors["delta"] = (self.table_lr * self.tensors["delta"]).half()
        self.tensors["vocab"] = vocab.int()

    def _full_table(self) -> Tensor:
        """The shipped table with the trained rows in place (built once per router)."""
        if self._table is None:
            table = _wordllama().table()
            vocab = self.tensors["vocab"].long()
            table[vocab] += self.tensors["delta"].float()
            self._table = table
        return self._table

    def _encode(self, z: Tensor) -> Tensor:
        t = self.tensors
        return F.normalize(F.gelu(z @ t["w1"] + t["b1"]) @ t["w2"], dim=1)

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        if self.encoder == "finetune":
            bags = TokenBags.of(_wordllama().token_ids(queries))
            z = F.normalize(bags.pool(self._full_table()), dim=1)
        assert z is not None
        with torch.no_grad():
            e = self._encode(z.float())
            return torch.softmax(e @ F.normalize(self.tensors["keys"], dim=1).T / self.tau, 1)
