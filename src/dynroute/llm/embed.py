"""Query embedders: texts -> ``[n, d]`` unit vectors, behind one small interface.

None needs a download:

- :class:`TfidfSvd` (``tfidf_svd``, the default): TF-IDF over word unigrams and bigrams of
  the training queries, projected on its top singular vectors (latent semantic analysis).
  Deterministic: the randomised SVD runs under a fixed seed without touching the caller's
  RNG.
- :class:`WordLlamaEmbedder` (``wordllama``): the static 256-d token embedding that the
  ``wordllama`` wheel ships (``l2_supercat``), mean-pooled; a semantic view with nothing to
  fit.
- :class:`Concat` (``concat``): several embedders side by side, each part of unit length,
  e.g. ``{"name": "concat", "parts": ["tfidf_svd", "wordllama"]}``.
- :class:`SentenceTransformer` (``sentence_transformer``): a local sentence-transformers
  folder, when that package is installed.

:data:`EMBEDDERS` maps each name to its class; :func:`make_embedder` builds one from a
name or a saved config.

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
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "EMBEDDERS",
    "Concat",
    "Embedder",
    "SentenceTransformer",
    "TfidfSvd",
    "WordLlamaEmbedder",
    "embedder_label",
    "make_embedder",
]

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


class WordLlamaEmbedder:
    """WordLlama's static token embedding (shipped in its wheel), mean-pooled: ``[n, dim]``.

    ``dim`` is 64, 128, 256 (Matryoshka truncations of the 256-d table). Loaded from the
    installed package with downloads disabled: it never touches the network.
    """

    name = "wordllama"

    def __init__(self, dim: int = 256, batch_size: int = 256) -> None:
        try:
            import wordllama
        except ImportError:
            raise ImportError(
                "the wordllama embedder needs the `wordllama` package (a dependency of "
                "dynroute: reinstall with `pip install -e .`)"
            ) from None
        if dim not in (64, 128, 256):
            raise ValueError(f"wordllama dim must be 64, 128 or 256, not {dim}")
        self.dim, self.batch_size = dim, batch_size
        folder = Path(wordllama.__file__).parent  # its wheel carries the weights
        self.model = wordllama.WordLlama.load(
            cache_dir=folder, disable_download=True, trunc_dim=dim if dim < 256 else None
        )

    def fit(self, texts: Sequence[str]) -> WordLlamaEmbedder:
        return self  # pretrained and static: nothing to fit

    def encode(self, texts: Sequence[str]) -> Tensor:
        z = self.model.embed(list(texts), norm=False, batch_size=self.batch_size)
        return torch.nn.functional.normalize(torch.from_numpy(z).float(), dim=1)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, as :meth:`encode` pools them (its tokenizer, no special
        tokens, no truncation, ids clipped to the table as WordLlama does).

        Example:
            >>> e = make_embedder("wordllama")
            >>> ids = e.token_ids(["add two numbers"])[0]
            >>> z = e.table()[ids].mean(0)
            >>> bool(torch.allclose(e.encode(["add two numbers"])[0], z / z.norm(), atol=1e-6))
            True
        """
        last = self.model.embedding.shape[0] - 1
        return [
            [min(max(t, 0), last) for t, m in zip(enc.ids, enc.attention_mask, strict=True) if m]
            for enc in self.model.tokenize(list(texts))
        ]

    def table(self) -> Tensor:
        """The static token embedding ``[vocab, dim]`` (float32, a copy: safe to change)."""
        return torch.from_numpy(self.model.embedding).float().clone()

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "batch_size": self.batch_size}

    def state(self) -> dict[str, Tensor]:
        return {}

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> WordLlamaEmbedder:
        return cls(config.get("dim", 256), config.get("batch_size", 256))


class Concat:
    """Embedders side by side: ``[n, sum of dims]``, each part scaled to norm 1/sqrt(parts).

    Example:
        >>> e = Concat([TfidfSvd(dim=2), TfidfSvd(dim=3)]).fit(["a b", "b c", "c d"])
        >>> z = e.encode(["a c"]); z.shape, round(float(z.norm()), 4)
        (torch.Size([1, 5]), 1.0)
    """

    name = "concat"

    def __init__(self, parts: Sequence[Embedder]) -> None:
        if not parts:
            raise ValueError("concat needs at least one part")
        self.parts = list(parts)
        self.dim = sum(p.dim for p in self.parts)

    def fit(self, texts: Sequence[str]) -> Concat:
        for p in self.parts:
            p.fit(texts)
        return self

    def encode(self, texts: Sequence[str]) -> Tensor:
        scale = 1.0 / math.sqrt(len(self.parts))
        return torch.cat([p.encode(texts) * scale for p in self.parts], dim=1)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "parts": [p.config() for p in self.parts]}

    def state(self) -> dict[str, Tensor]:
        return {f"{i}.{k}": v for i, p in enumerate(self.parts) for k, v in p.state().items()}

    @classmethod
    def from_config(cls, config: dict[str, Any], state: dict[str, Tensor] | None) -> Concat:
        parts = []
        for i, part in enumerate(config["parts"]):
            mine = (
                None
                if state is None
                else {
                    k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(i)
                }
            )
            parts.append(make_embedder(part, mine))
        return cls(parts)


EMBEDDERS: dict[str, type] = {
    c.name: c for c in (TfidfSvd, WordLlamaEmbedder, Concat, SentenceTransformer)
}


def make_embedder(
    config: dict[str, Any] | str | None = None, state: dict[str, Tensor] | None = None
) -> Embedder:
    """An embedder from a name, ``"a+b"`` (a :class:`Concat`), or a saved config; with
    ``state``, an already fitted one.

    Example:
        >>> make_embedder("tfidf_svd+wordllama").config()["parts"][1]["name"]
        'wordllama'
    """
    if config is None:
        config = {"name": TfidfSvd.name}
    if isinstance(config, str):
        names = config.split("+")
        if len(names) > 1:
            return Concat([make_embedder(n) for n in names])
        config = {"name": config}
    name = config["name"]
    if name not in EMBEDDERS:
        known = ", ".join(sorted(EMBEDDERS))
        raise ValueError(f"unknown embedder {name!r}; known: {known} (or a+b to concatenate)")
    if name == Concat.name:
        return Concat.from_config(config, state)
    if name == SentenceTransformer.name:
        return SentenceTransformer(config["path"], config.get("batch_size", 64))
    params = {k: v for k, v in config.items() if k not in ("name", "vocab")}
    if state is not None:
        return EMBEDDERS[name].from_state(config, state)
    return EMBEDDERS[name](**params)


def embedder_label(config: dict[str, Any]) -> str:
    """The name :func:`make_embedder` takes for a config: ``"a+b"`` for a concatenation.

    Example:
        >>> embedder_label(make_embedder("tfidf_svd+wordllama").config())
        'tfidf_svd+wordllama'
    """
    if config["name"] == Concat.name:
        return "+".join(embedder_label(p) for p in config["parts"])
    return str(config["name"])
