"""Deterministic train/validation splitting and byte caps for lists of documents."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

__all__ = [
    "SPLITS",
    "VALIDATION_FRACTION",
    "Split",
    "cap_bytes",
    "cap_bytes_spread",
    "check_split",
    "hash_score",
    "iter_capped",
    "split_names",
    "split_text",
]

Split = Literal["train", "validation"]
SPLITS: tuple[Split, ...] = ("train", "validation")
VALIDATION_FRACTION = 0.05


def check_split(split: str) -> Split:
    """Validate a split name.

    Args:
        split: ``"train"`` or ``"validation"``.

    Returns:
        Split: the same string, typed.

    Raises:
        ValueError: for any other name.

    Example:
        >>> check_split("train")
        'train'
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split  # type: ignore[return-value]


def hash_score(name: str) -> float:
    """Map a name to a stable pseudo-random number in ``[0, 1)`` (sha256-based).

    Args:
        name: any string, e.g. a POSIX relative path ``"json/decoder.py"``.

    Returns:
        float: identical across runs, processes and machines.

    Example:
        >>> 0.0 <= hash_score("json/decoder.py") < 1.0
        True
    """
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_names(
    names: Sequence[str], fraction: float = VALIDATION_FRACTION
) -> dict[Split, list[str]]:
    """Split names (e.g. relative file paths) into train/validation by :func:`hash_score`.

    A name goes to validation iff ``hash_score(name) < fraction``. With two or more
    names both splits are guaranteed non-empty: if no name hashed into validation the
    lowest-scoring one is moved there (and symmetrically for train). Output lists keep
    the input order.

    Args:
        names: unique names, length N.
        fraction: target validation share in ``(0, 1)``.

    Returns:
        dict: ``{"train": [...], "validation": [...]}``, disjoint, union == names.

    Example:
        >>> s = split_names(["a.py", "b.py", "c.py"])
        >>> sorted(s["train"] + s["validation"])
        ['a.py', 'b.py', 'c.py']
    """
    scores = {n: hash_score(n) for n in names}
    val = {n for n in names if scores[n] < fraction}
    if len(names) >= 2:
        if not val:
            val = {min(names, key=lambda n: (scores[n], n))}
        elif len(val) == len(names):
            val.discard(max(names, key=lambda n: (scores[n], n)))
    return {
        "train": [n for n in names if n not in val],
        "validation": [n for n in names if n in val],
    }


def split_text(text: str, fraction: float = VALIDATION_FRACTION) -> dict[Split, str]:
    """Split one text into a head (train) and a tail (validation) at a line boundary.

    The cut is placed just after the first newline at or after character
    ``int(len(text) * (1 - fraction))``; if there is none it falls back to that exact
    character. Both parts are non-empty whenever ``len(text) >= 2``.

    Args:
        text: the whole document, length L characters.
        fraction: target validation share of characters.

    Returns:
        dict: ``{"train": text[:cut], "validation": text[cut:]}``.

    Example:
        >>> split_text("a\\nb\\nc\\n", fraction=0.3)
        {'train': 'a\\nb\\n', 'validation': 'c\\n'}
    """
    n = len(text)
    if n < 2:
        return {"train": text, "validation": ""}
    target = min(max(int(n * (1.0 - fraction)), 1), n - 1)
    newline = text.find("\n", target - 1)
    cut = newline + 1 if 0 <= newline < n - 1 else target
    return {"train": text[:cut], "validation": text[cut:]}


def cap_bytes(documents: Sequence[str], max_bytes: int | None) -> list[str]:
    """Keep leading documents until their UTF-8 size reaches ``max_bytes``.

    The document that crosses the limit is truncated (at a character boundary) so the
    total is at most ``max_bytes``; empty documents are dropped.

    Args:
        documents: list of N strings.
        max_bytes: byte budget (> 0) or ``None`` for no cap.

    Returns:
        list[str]: a prefix of ``documents`` (last item possibly shortened).

    Example:
        >>> cap_bytes(["abcd", "efgh"], 6)
        ['abcd', 'ef']
    """
    if max_bytes is None:
        return [d for d in documents if d]
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
    return list(iter_capped(documents, max_bytes))


def iter_capped(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """The non-empty ``texts`` from the start, up to ``max_bytes`` UTF-8 bytes in total (the
    text that crosses the budget cut short); reads ``texts`` only as far as it needs."""
    budget = max_bytes
    for text in texts:
        if not text:
            continue
        raw = text.encode("utf-8")
        if len(raw) >= budget:
            head = raw[:budget].decode("utf-8", errors="ignore")
            if head:
                yield head
            return
        budget -= len(raw)
        yield text


def cap_bytes_spread(
    documents: Sequence[str], max_bytes: int | None, keys: Sequence[str] | None = None
) -> list[str]:
    """Like :func:`cap_bytes` but picks a representative, deterministic subset.

    Documents are visited in pseudo-random order (``hash_score("sample:" + key)``, keys
    default to the indices) until the budget is used up, the crossing document is
    truncated, and the chosen documents are returned in their original order. Use it
    so that e.g. a 1 MB sample of the stdlib is not just ``asyncio/``.

    Args:
        documents: list of N strings.
        max_bytes: byte budget (> 0) or ``None`` (keep all non-empty documents).
        keys: N stable names (e.g. relative paths) driving the order.

    Returns:
        list[str]: at most ``max_bytes`` UTF-8 bytes in total.

    Example:
        >>> sum(len(d) for d in cap_bytes_spread(["ab", "cd", "ef"], 4))
        4
    """
    if max_bytes is None:
        return [d for d in documents if d]
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
    names = list(keys) if keys is not None else [str(i) for i in range(len(documents))]
    if len(names) != len(documents):
        raise ValueError("keys and documents must have the same length")
    order = sorted(range(len(documents)), key=lambda i: (hash_score("sample:" + names[i]), i))
    visit = [i for i in order if documents[i]]
    # cap_bytes keeps its input order and only stops early, so position j is visit[j].
    chosen = dict(zip(visit, cap_bytes([documents[i] for i in visit], max_bytes), strict=False))
    return [chosen[i] for i in sorted(chosen)]
