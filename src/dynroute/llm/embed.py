"""Query embedders: texts -> ``[n, d]`` unit vectors, behind one small interface.

The default :class:`TfidfSvd` needs no download: TF-IDF over word unigrams and bigrams
of the training queries, projected on its top singular vectors (latent semantic
analysis). It is deterministic: the randomised SVD runs under a fixed seed without
touching the caller's RNG. :class:`SentenceTransformer` wraps a local
sentence-transformers model when that package is installed.

Example:
    >>> e = TfidfSvd(dim=2).fit(["add two numbers", "add three numbers",
    ...                                     "capital of France", "capital of Spain"])
    >>> e.encode(["add numbers"]).shape
    torch.Size([1, 2])
    >>> e2 = make_embedder(e.config(), e.state())
    >>> bool((e2.encode(["capital"]) == e.encode(["capital"])).all())
    True
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Embedder", "SentenceTransformer", "TfidfSvd", "make_embedder"]

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to ``[n, dim]`` float32 rows of unit length."""

    dim: int

    def fit(self, texts: Sequence[str]) -> Embedder: ...

    def encode(self, texts: Sequence[str]) -> Tensor: ...

    def config(self) -> dict[str, Any]:
        """JSON-able description, ``{"name": ..., **params}``."""
        ...

    def state(self) -> dict[str, Tensor]:
        """Fitted tensors (saved with safetensors)."""
        ...


def _terms(text: str) -> list[str]:
    words = _TOKEN.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


class TfidfSvd:
    """TF-IDF (sublinear tf, smooth idf, L2 rows) followed by a rank-``dim`` SVD."""

    name = "tfidf_svd"

    def __init__(
        self, dim: int = 128, max_features: int = 30000, min_df: int = 1, seed: int = 0
    ) -> None:
        self.dim, self.max_features, self.min_df, self.seed = dim, max_features, min_df, seed
        self.vocab: dict[str, int] = {}
        self.idf = torch.empty(0)
        self.components = torch.empty(0)  # [V, dim]
        self._cache: dict[int, Tensor] = {}

    def config(self) -> dict[str, Any]:
        params = {k: getattr(self, k) for k in ("dim", "max_features", "min_df", "seed")}
        vocab = sorted(self.vocab, key=self.vocab.__getitem__)
        return {"name": self.name, **params, "vocab": vocab}

    def state(self) -> dict[str, Tensor]:
        return {"idf": self.idf, "components": self.components}

    def _tfidf(self, texts: Sequence[str]) -> Tensor:
        """Sparse ``[n, V]`` TF-IDF matrix with unit rows."""
        rows, cols, vals = [], [], []
        for i, text in enumerate(texts):
            counts = Counter(t for t in _terms(text) if t in self.vocab)
            if not counts:
                continue
            ids = [self.vocab[t] for t in counts]
            w = torch.tensor([1.0 + math.log(c) for c in counts.values()]) * self.idf[ids]
            w = w / w.norm()
            rows += [i] * len(ids)
            cols += ids
            vals.append(w)
        v = torch.cat(vals) if vals else torch.zeros(0)
        return torch.sparse_coo_tensor(
            torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1),
            v,
            (len(texts), len(self.vocab)),
            check_invariants=True,
        ).coalesce()

    def fit(self, texts: Sequence[str]) -> TfidfSvd:
        df: Counter[str] = Counter()
        for text in texts:
            df.update(set(_terms(text)))
        # Most frequent terms first, ties by the term itself, so the vocabulary is stable.
        kept = sorted((t for t, c in df.items() if c >= self.min_df), key=lambda t: (-df[t], t))
        self.vocab = {t: i for i, t in enumerate(kept[: self.max_features])}
        n = len(texts)
        counts = torch.tensor([df[t] for t in self.vocab], dtype=torch.float32)
        self.idf = torch.log((1.0 + n) / (1.0 + counts)) + 1.0
        x = self._tfidf(texts)
        k = min(self.dim, *x.shape)
        # fork_rng: a fixed seed for the randomised SVD without touching the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            _, _, v = torch.svd_lowrank(x, q=min(k + 10, *x.shape), niter=6)
        v = v[:, :k]
        # Fix each component's sign (largest entry positive): SVD signs are arbitrary.
        flip = torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
        self.components = (v * flip).contiguous()
        if k < self.dim:  # tiny corpora: pad so dim stays what the config says
            pad = torch.zeros(v.shape[0], self.dim - k)
            self.components = torch.cat([self.components, pad], 1)
        self._cache.clear()
        return self

    def encode(self, texts: Sequence[str]) -> Tensor:
        key = hash(tuple(texts))
        if key not in self._cache:
            z = torch.sparse.mm(self._tfidf(texts), self.components)
            z = torch.nn.functional.normalize(z, dim=1)
            if len(self._cache) > 8:  # routers re-encode the same splits; keep a few
                self._cache.clear()
            self._cache[key] = z
        return self._cache[key]

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> TfidfSvd:
        e = cls(config["dim"], config["max_features"], config["min_df"], config["seed"])
        e.vocab = {t: i for i, t in enumerate(config["vocab"])}
        e.idf, e.components = state["idf"], state["components"]
        return e


class SentenceTransformer:
    """A local sentence-transformers model (``path``: a folder with the model files)."""

    name = "sentence_transformer"

    def __init__(self, path: str, batch_size: int = 64) -> None:
        try:
            from sentence_transformers import SentenceTransformer as _ST
        except ImportError:
            raise ImportError(
                "the sentence_transformer embedder needs `pip install sentence-transformers`; "
                "the default tfidf_svd embedder works without it"
            ) from None
        self.path, self.batch_size = path, batch_size
        self.model = _ST(path, local_files_only=True)
        self.dim = int(self.model.get_sentence_embedding_dimension())

    def fit(self, texts: Sequence[str]) -> SentenceTransformer:
        return self  # pretrained: nothing to fit

    def encode(self, texts: Sequence[str]) -> Tensor:
        z = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return z.float().cpu()

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "batch_size": self.batch_size}

    def state(self) -> dict[str, Tensor]:
        return {}


def make_embedder(
    config: dict[str, Any] | str | None = None, state: dict[str, Tensor] | None = None
) -> Embedder:
    """An embedder from a name or config; with ``state``, an already fitted one."""
    if config is None:
        config = {"name": TfidfSvd.name}
    if isinstance(config, str):
        config = {"name": config}
    name = config["name"]
    if name == TfidfSvd.name:
        if state is not None:
            return TfidfSvd.from_state(config, state)
        params = {k: v for k, v in config.items() if k not in ("name", "vocab")}
        return TfidfSvd(**params)
    if name == SentenceTransformer.name:
        return SentenceTransformer(config["path"], config.get("batch_size", 64))
    raise ValueError(f"unknown embedder {name!r}; use tfidf_svd or sentence_transformer")
