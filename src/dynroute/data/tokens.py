"""Flat token-id files: encode documents once, store as a memory-mapped array.

Layout: ``<name>.bin`` holds the raw little-endian ids (uint16 if the vocabulary has
fewer than 65536 entries, else uint32) and ``<name>.json`` the sidecar
``{"format", "dtype", "length", "vocab_size", "eos_id", "num_documents", "fingerprint"}``.
Both are written atomically; a matching fingerprint means the file is reused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from dynroute.common.files import atomic_path, atomic_write_text
from dynroute.data.batches import TokenDataset, get_batch, iter_eval_batches
from dynroute.data.tokenizer import eos_id as tokenizer_eos_id

__all__ = [
    "TOKENS_FORMAT_VERSION",
    "TokenDataset",
    "encode_documents",
    "get_batch",
    "get_token_file",
    "iter_encoded_chunks",
    "iter_eval_batches",
    "load_token_file",
    "token_dtype",
    "write_token_file",
]

TOKENS_FORMAT_VERSION = 1
_PIECE_CHARS = 1 << 20  # long documents are encoded in ~1M-char line-aligned pieces
_BATCH_PIECES = 256


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """Smallest unsigned dtype for ids ``< vocab_size``: uint16 below 65536, else uint32.

    Args:
        vocab_size: number of token ids.

    Returns:
        np.dtype: ``uint16`` or ``uint32``.

    Example:
        >>> token_dtype(4096), token_dtype(70_000)
        (dtype('uint16'), dtype('uint32'))
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


def _pieces(doc: str, max_chars: int = _PIECE_CHARS) -> list[str]:
    """Split a long document at newlines into pieces of at most ~``max_chars``."""
    if len(doc) <= max_chars:
        return [doc]
    out = []
    start = 0
    while len(doc) - start > max_chars:
        cut = doc.rfind("\n", start, start + max_chars)
        cut = start + max_chars if cut <= start else cut + 1
        out.append(doc[start:cut])
        start = cut
    out.append(doc[start:])
    return out


def iter_encoded_chunks(
    tokenizer: Tokenizer, documents: Iterable[str], dtype: np.dtype[Any] | None = None
) -> Iterator[tuple[np.ndarray, int]]:
    """Encode documents in parallel batches, appending EOS after every document.

    Uses ``encode_batch_fast`` (no offsets) when available, else ``encode_batch``.

    Args:
        tokenizer: tokenizer with ``<|endoftext|>``.
        documents: iterable of N strings.
        dtype: output dtype (default: :func:`token_dtype` of the vocabulary).

    Yields:
        tuple[np.ndarray, int]: a 1-D id chunk ``[n_i]`` and the number of documents it
        completes; concatenating all chunks gives the full stream.

    Example:
        >>> from dynroute.data.tokenizer import train_tokenizer
        >>> tok = train_tokenizer(["ab"] * 10, vocab_size=260)
        >>> [(c.tolist(), n) for c, n in iter_encoded_chunks(tok, ["ab", "b"])][0][1]
        2
    """
    eos = tokenizer_eos_id(tokenizer)
    out_dtype = dtype if dtype is not None else token_dtype(tokenizer.get_vocab_size())
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    pieces: list[str] = []
    ends: list[bool] = []  # True where a piece is the last piece of a document

    def flush() -> tuple[np.ndarray, int]:
        encoded = encode(pieces, add_special_tokens=False)
        ids: list[int] = []
        for enc, is_end in zip(encoded, ends, strict=True):
            ids.extend(enc.ids)
            if is_end:
                ids.append(eos)
        flat = np.array(ids, dtype=out_dtype)
        n_docs = sum(ends)
        pieces.clear()
        ends.clear()
        return flat, n_docs

    for doc in documents:
        if not doc:
            continue
        split = _pieces(doc)
        pieces.extend(split)
        ends.extend([False] * (len(split) - 1) + [True])
        if len(pieces) >= _BATCH_PIECES:
            yield flush()
    if pieces:
        yield flush()


def encode_documents(tokenizer: Tokenizer, documents: Iterable[str]) -> np.ndarray:
    """Encode documents into one in-memory flat id array (EOS after each document).

    Args:
        tokenizer: tokenizer with ``<|endoftext|>``.
        documents: N strings.

    Returns:
        np.ndarray: shape ``[L]``, dtype from :func:`token_dtype`.

    Example:
        >>> from dynroute.data.tokenizer import train_tokenizer
        >>> tok = train_tokenizer(["ab"] * 10, vocab_size=260)
        >>> int(encode_documents(tok, ["ab", "ab"])[-1])  # EOS id
        0
    """
    chunks = [c for c, _ in iter_encoded_chunks(tokenizer, documents)]
    if not chunks:
        return np.empty(0, dtype=token_dtype(tokenizer.get_vocab_size()))
    return np.concatenate(chunks)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def write_token_file(
    path: Path | str, tokenizer: Tokenizer, documents: Iterable[str], fingerprint: str
) -> dict[str, Any]:
    """Stream-encode ``documents`` into ``path`` (``.bin``) plus a JSON sidecar, atomically.

    The old sidecar is removed first and the new one written last, so a crash never
    leaves a sidecar describing a different data file.

    Args:
        path: data file path, e.g. ``cache/tokens-ab12/train.bin``.
        tokenizer: tokenizer used for encoding.
        documents: iterable of strings.
        fingerprint: identity stored in the sidecar (checked by :func:`load_token_file`).

    Returns:
        dict: the sidecar contents.

    Example:
        >>> from dynroute.data.tokenizer import train_tokenizer
        >>> tok = train_tokenizer(["ab"] * 10, vocab_size=260)
        >>> write_token_file("/tmp/t.bin", tok, ["ab"], "fp")["length"]
        2
    """
    path = Path(path)
    vocab = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab)
    _sidecar(path).unlink(missing_ok=True)
    length = 0
    num_docs = 0
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        for chunk, n_docs in iter_encoded_chunks(tokenizer, documents, dtype):
            fh.write(chunk.astype(dtype.newbyteorder("<"), copy=False).tobytes())
            length += int(chunk.size)
            num_docs += n_docs
    meta = {
        "format": TOKENS_FORMAT_VERSION,
        "dtype": dtype.name,
        "length": length,
        "vocab_size": vocab,
        "eos_id": tokenizer_eos_id(tokenizer),
        "num_documents": num_docs,
        "fingerprint": fingerprint,
    }
    atomic_write_text(_sidecar(path), json.dumps(meta, indent=2))
    return meta


def load_token_file(path: Path | str, fingerprint: str | None = None) -> np.ndarray:
    """Open a token file as a read-only ``np.memmap`` after validating its sidecar.

    Args:
        path: the ``.bin`` file written by :func:`write_token_file`.
        fingerprint: if given, must equal the sidecar's fingerprint.

    Returns:
        np.ndarray: read-only memmap of shape ``[length]`` (an empty array if length 0).

    Raises:
        FileNotFoundError: data or sidecar missing.
        ValueError: fingerprint, format or size mismatch (the file is stale/corrupt).

    Example:
        >>> from dynroute.data.tokenizer import train_tokenizer
        >>> tok = train_tokenizer(["ab"] * 10, vocab_size=260)
        >>> _ = write_token_file("/tmp/t.bin", tok, ["ab"], "fp")
        >>> load_token_file("/tmp/t.bin", "fp").shape
        (2,)
    """
    path = Path(path)
    side = _sidecar(path)
    if not path.is_file() or not side.is_file():
        raise FileNotFoundError(f"token file {path} or its sidecar {side} is missing")
    meta = json.loads(side.read_text(encoding="utf-8"))
    if meta.get("format") != TOKENS_FORMAT_VERSION:
        raise ValueError(f"{side}: unsupported format {meta.get('format')!r}")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise ValueError(f"{side}: fingerprint {meta.get('fingerprint')!r} != {fingerprint!r}")
    dtype = np.dtype(meta["dtype"])
    if sys.byteorder != "little":
        dtype = dtype.newbyteorder("<")  # files are always little-endian
    length = int(meta["length"])
    if path.stat().st_size != length * dtype.itemsize:
        raise ValueError(f"{path}: size does not match sidecar length {length}")
    if length == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


def get_token_file(
    path: Path | str,
    tokenizer: Tokenizer,
    documents: Iterable[str] | Callable[[], Iterable[str]],
    fingerprint: str,
) -> np.ndarray:
    """Return the cached token memmap at ``path``, (re)building it if stale or missing.

    Args:
        path: data file path (``.bin``); sidecar is ``path.with_suffix(".json")``.
        tokenizer: tokenizer used on a cache miss.
        documents: strings, or a zero-argument callable returning them (only called on
            a cache miss).
        fingerprint: identity of (tokenizer, corpus, split); a mismatch triggers rebuild.

    Returns:
        np.ndarray: read-only memmap ``[L]`` of uint16/uint32 ids.

    Example:
        >>> from dynroute.data.tokenizer import train_tokenizer
        >>> tok = train_tokenizer(["ab"] * 10, vocab_size=260)
        >>> get_token_file("/tmp/t2.bin", tok, lambda: ["ab"], "fp2").dtype
        dtype('uint16')
    """
    try:
        return load_token_file(path, fingerprint)
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError):
        pass
    docs = documents() if callable(documents) else documents
    write_token_file(path, tokenizer, docs, fingerprint)
    return load_token_file(path, fingerprint)
