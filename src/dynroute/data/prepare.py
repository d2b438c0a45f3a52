"""One-call data preparation: corpus -> cached tokenizer -> cached token memmaps."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from dynroute.data.batches import TokenDataset
from dynroute.data.cache import default_cache_dir, fingerprint
from dynroute.data.corpus import corpus_key, load_corpus
from dynroute.data.splitting import Split
from dynroute.data.tokenizer import DEFAULT_VOCAB_SIZE, as_hf_tokenizer, eos_id, get_tokenizer
from dynroute.data.tokens import TOKENS_FORMAT_VERSION, get_token_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["DEFAULT_TOKENIZER_TRAIN_BYTES", "PreparedData", "prepare_data"]

DEFAULT_TOKENIZER_TRAIN_BYTES = 4_000_000


@dataclass(frozen=True)
class PreparedData:
    """Everything a training run needs from the data layer.

    Attributes:
        tokenizer: trained byte-level BPE (``<|endoftext|>`` = ``eos_id``).
        train_tokens: read-only memmap ``[L_train]`` (uint16 if vocab < 65536).
        val_tokens: read-only memmap ``[L_val]``.
        vocab_size: actual tokenizer vocabulary size (<= requested; use it for the
            embedding table).
        eos_id: id of ``<|endoftext|>`` (document separator).
        corpus_key: identity of the source corpus.
        cache_path: folder holding ``train.bin``/``validation.bin`` and sidecars.
        timings: seconds spent per stage (``"tokenizer"``, ``"train"``, ``"validation"``).

    Example:
        >>> data = prepare_data(max_train_bytes=200_000)  # doctest: +SKIP
        >>> x, y = data.train.batch(8, 128)                # doctest: +SKIP
    """

    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    vocab_size: int
    eos_id: int
    corpus_key: str
    cache_path: Path
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def train(self) -> TokenDataset:
        """Training tokens wrapped as :class:`TokenDataset`."""
        return TokenDataset(self.train_tokens)

    def hf_tokenizer(self) -> PreTrainedTokenizerFast:
        """The tokenizer as ``transformers.PreTrainedTokenizerFast`` (for ``generate``)."""
        return as_hf_tokenizer(self.tokenizer)


def prepare_data(
    source: str | Path | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    cache_dir: Path | str | None = None,
    max_train_bytes: int | None = None,
    *,
    text_column: str = "text",
    tokenizer_train_bytes: int | None = DEFAULT_TOKENIZER_TRAIN_BYTES,
    max_val_bytes: int | None = None,
) -> PreparedData:
    """Load a corpus, get (train or load) its tokenizer and its cached token memmaps.

    Cache layout under ``cache_dir`` (default ``$DYNROUTE_CACHE`` or
    ``~/.cache/dynroute``): ``tokenizer-<fp>/tokenizer.json`` and
    ``tokens-<fp>/{train,validation}.{bin,json}``. A second call with the same
    arguments and unchanged corpus files reads everything from the cache (the corpus
    is not even read).

    Args:
        source: ``None``/``"stdlib"``, a text file, a folder or a saved ``datasets``
            folder (see :func:`dynroute.data.corpus.load_corpus`).
        vocab_size: requested tokenizer vocabulary size (>= 257).
        cache_dir: cache root.
        max_train_bytes: optional cap on the training text (UTF-8 bytes).
        text_column: text column for saved datasets.
        tokenizer_train_bytes: cap on the tokenizer's training sample (keeps BPE
            training to a few seconds); ``None`` uses all training text.
        max_val_bytes: optional cap on the validation text.

    Returns:
        PreparedData: tokenizer, train/validation memmaps, vocab size, EOS id, paths.

    Example:
        >>> data = prepare_data("stdlib", 4096, "/tmp/dr", max_train_bytes=1_000_000)
        >>> data.train_tokens.dtype, data.vocab_size <= 4096  # doctest: +SKIP
        (dtype('uint16'), True)
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = corpus_key(source, text_column=text_column)
    sample_cap = tokenizer_train_bytes
    if max_train_bytes is not None:
        sample_cap = max_train_bytes if sample_cap is None else min(sample_cap, max_train_bytes)

    def load(split: Split, cap: int | None) -> Callable[[], list[str]]:
        return lambda: load_corpus(source, split, text_column=text_column, max_bytes=cap)

    # read at most once: shared by tokenizer training and train encoding
    train_docs = functools.cache(load("train", max_train_bytes))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    tok = get_tokenizer(key, train_docs, vocab_size, root, max_bytes=sample_cap)
    timings["tokenizer"] = time.perf_counter() - t0

    tok_fp = fingerprint(tok.to_str())
    folder = root / f"tokens-{fingerprint(TOKENS_FORMAT_VERSION, key, tok_fp)}"
    arrays: dict[str, np.ndarray] = {}
    for split, cap, docs in (
        ("train", max_train_bytes, train_docs),
        ("validation", max_val_bytes, load("validation", max_val_bytes)),
    ):
        t0 = time.perf_counter()
        fp = fingerprint(TOKENS_FORMAT_VERSION, key, tok_fp, split, cap)
        arrays[split] = get_token_file(folder / f"{split}.bin", tok, docs, fp)
        timings[split] = time.perf_counter() - t0

    return PreparedData(
        tokenizer=tok,
        train_tokens=arrays["train"],
        val_tokens=arrays["validation"],
        vocab_size=tok.get_vocab_size(),
        eos_id=eos_id(tok),
        corpus_key=key,
        cache_path=folder,
        timings=timings,
    )
