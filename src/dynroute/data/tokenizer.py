"""Byte-level BPE tokenizer: training, on-disk caching and a transformers wrapper."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dynroute.common.files import atomic_write_text
from dynroute.data.cache import fingerprint
from dynroute.data.splitting import cap_bytes_spread, iter_capped

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "EOS_TOKEN",
    "MIN_VOCAB_SIZE",
    "as_hf_tokenizer",
    "eos_id",
    "get_tokenizer",
    "tokenizer_fingerprint",
    "train_tokenizer",
]

EOS_TOKEN = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 4096
MIN_VOCAB_SIZE = 257  # 256 byte symbols + EOS
TOKENIZER_FORMAT_VERSION = 1

TextSource = Iterable[str] | Callable[[], Iterable[str]]


def _take_bytes(texts: Iterable[str], max_bytes: int | None) -> Iterable[str]:
    """Cap the training sample at ``max_bytes`` UTF-8 bytes.

    A list/tuple is sampled spread out (see ``cap_bytes_spread``); other iterables are
    consumed from the start, the last text truncated.
    """
    if max_bytes is None:
        return (t for t in texts if t)
    if isinstance(texts, Sequence) and not isinstance(texts, str):
        return cap_bytes_spread(texts, max_bytes)
    return iter_capped(texts, max_bytes)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, max_bytes: int | None = None
) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE tokenizer with ``<|endoftext|>`` as id 0.

    Every byte is in the base alphabet, so any text round-trips losslessly. The result
    may have fewer than ``vocab_size`` entries if the sample is tiny.

    Args:
        texts: training documents (any iterable of str).
        vocab_size: target vocabulary size, >= 257.
        max_bytes: optional cap on the UTF-8 bytes of training text consumed (a list is
            sampled spread out deterministically, an iterator from its start).

    Returns:
        tokenizers.Tokenizer: ``get_vocab_size() <= vocab_size``.

    Example:
        >>> tok = train_tokenizer(["def f(x):\\n    return x\\n"] * 50, vocab_size=300)
        >>> tok.decode(tok.encode("return x").ids)
        'return x'
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + EOS)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # type: ignore[assignment]
    tok.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_take_bytes(texts, max_bytes), trainer=trainer)
    return tok


def eos_id(tokenizer: Tokenizer) -> int:
    """Id of ``<|endoftext|>`` in ``tokenizer``.

    Args:
        tokenizer: a tokenizer built by :func:`train_tokenizer`.

    Returns:
        int: the EOS id (0 for tokenizers trained here).

    Example:
        >>> eos_id(train_tokenizer(["abc"] * 10, vocab_size=260))
        0
    """
    idx = tokenizer.token_to_id(EOS_TOKEN)
    if idx is None:
        raise ValueError(f"tokenizer has no {EOS_TOKEN!r} token")
    return int(idx)


def tokenizer_fingerprint(corpus_key: str, vocab_size: int, max_bytes: int | None = None) -> str:
    """Cache key of a tokenizer trained on a corpus.

    Args:
        corpus_key: corpus identity, e.g. from :func:`dynroute.data.corpus.corpus_key`.
        vocab_size: requested vocabulary size.
        max_bytes: training-sample cap (part of the identity).

    Returns:
        str: 16 hex characters.

    Example:
        >>> tokenizer_fingerprint("stdlib-x", 4096) != tokenizer_fingerprint("stdlib-x", 8192)
        True
    """
    return fingerprint("tokenizer", TOKENIZER_FORMAT_VERSION, corpus_key, vocab_size, max_bytes)


def get_tokenizer(
    corpus_key: str,
    texts: TextSource,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    cache_dir: Path | str | None = None,
    max_bytes: int | None = None,
) -> Tokenizer:
    """Load the cached tokenizer for ``(corpus_key, vocab_size, max_bytes)`` or train it.

    The file lives at ``cache_dir/tokenizer-<fingerprint>/tokenizer.json`` (written
    atomically, with a ``meta.json`` next to it). On a cache hit ``texts`` is never
    iterated (pass a zero-argument callable to also skip loading the corpus).

    Args:
        corpus_key: identity of the training corpus.
        texts: training documents, or a callable returning them.
        vocab_size: target vocabulary size (>= 257).
        cache_dir: cache root; ``None`` means no caching (always trains).
        max_bytes: optional cap on the training sample size in UTF-8 bytes.

    Returns:
        tokenizers.Tokenizer: byte-level BPE with ``<|endoftext|>``.

    Example:
        >>> tok = get_tokenizer("demo", lambda: ["x = 1\\n"] * 20, 300, "/tmp/dr-cache")
        >>> tok.token_to_id("<|endoftext|>")
        0
    """
    fp = tokenizer_fingerprint(corpus_key, vocab_size, max_bytes)
    path = None if cache_dir is None else Path(cache_dir) / f"tokenizer-{fp}" / "tokenizer.json"
    if path is not None and path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:  # corrupt/foreign file: retrain and overwrite
            pass
    docs = texts() if callable(texts) else texts
    tok = train_tokenizer(docs, vocab_size=vocab_size, max_bytes=max_bytes)
    if path is not None:
        meta = {
            "fingerprint": fp,
            "corpus_key": corpus_key,
            "requested_vocab_size": vocab_size,
            "vocab_size": tok.get_vocab_size(),
            "max_bytes": max_bytes,
            "eos_token": EOS_TOKEN,
        }
        atomic_write_text(path, tok.to_str())
        atomic_write_text(path.with_name("meta.json"), json.dumps(meta, indent=2))
    return tok


def as_hf_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap as a ``transformers.PreTrainedTokenizerFast`` (EOS = BOS = PAD = UNK).

    The wrapper gets its own copy, so ``tokenizer`` is not modified.

    Args:
        tokenizer: a tokenizer from :func:`get_tokenizer` / :func:`train_tokenizer`.

    Returns:
        PreTrainedTokenizerFast: usable with ``model.generate`` and ``decode``.

    Example:
        >>> hf = as_hf_tokenizer(train_tokenizer(["abc abd"] * 10, vocab_size=260))
        >>> hf.decode(hf("abc").input_ids)
        'abc'
    """
    from transformers import PreTrainedTokenizerFast

    copy = Tokenizer.from_str(tokenizer.to_str())
    return PreTrainedTokenizerFast(
        tokenizer_object=copy,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=1_000_000_000,
        clean_up_tokenization_spaces=False,
    )
