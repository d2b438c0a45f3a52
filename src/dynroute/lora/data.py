"""Offline domains to fine-tune LoRA experts on, from text every Python install has.

:func:`lora_domains` builds four domains, each split into train and validation and capped
in size, with no download:

- ``python``: the standard library's ``.py`` sources (what the tiny base model saw);
- ``docstrings``: the docstrings of those files (English prose about code);
- ``docs``: ``.rst``/``.txt``/``.md`` files under the Python installation
  (``sysconfig.get_paths()["stdlib"]``, site-packages included), licences excluded;
- ``licenses``: licence texts from ``/usr/share/common-licenses`` when the machine has
  them, else the ``LICENSE``/``COPYING`` files of installed packages and Python's own.

A user folder works too: each sub-folder is a domain (``load_domains("path/")``), its
files read and split by ``dynroute.data.load_corpus``; or a ``datasets`` folder written by
``save_to_disk`` with a text column and a domain column (``domain_column="domain"``).
"""

from __future__ import annotations

import ast
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynroute.checkpoints import tokenize_documents
from dynroute.data import get_batch
from dynroute.data.corpus import CorpusError, is_saved_dataset, load_corpus, stdlib_files
from dynroute.data.splitting import cap_bytes_spread, split_names, split_text

__all__ = [
    "DOMAINS",
    "DomainMixture",
    "DomainTokens",
    "Domains",
    "load_domains",
    "lora_domains",
    "tokenize_domains",
]

#: name -> {"train": documents, "validation": documents}
Domains = dict[str, dict[str, list[str]]]
DOMAINS = ("python", "docstrings", "docs", "licenses")
_LICENSE_DIR = Path("/usr/share/common-licenses")
_DOC_SUFFIXES = (".rst", ".txt", ".md")


def _read(path: Path) -> str | None:
    # read_text: universal newlines (the built-in domains' text depends on it)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.strip() and "\x00" not in text[:4096] else None


def _is_license(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE"))


def _docstrings(text: str) -> str:
    """Every module, class and function docstring of a Python source, blank-line separated."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return ""
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef |
                                                             ast.AsyncFunctionDef))]  # fmt: skip
    docs = [ast.get_docstring(n) for n in nodes]
    return "\n\n".join(d for d in docs if d)


def _by_file(
    named: list[tuple[str, str]], max_bytes: dict[str, int | None]
) -> dict[str, list[str]]:
    """Split (name, text) documents by a stable hash of the name, then cap each split."""
    if len(named) < 2:
        # one document: head for training, tail for validation
        parts = [split_text(t) for _, t in named]
        return {s: cap_bytes_spread([p[s] for p in parts], max_bytes[s]) for s in max_bytes}
    splits = split_names([n for n, _ in named])
    text = dict(named)
    return {
        s: cap_bytes_spread([text[n] for n in splits[s]], max_bytes[s], keys=splits[s])
        for s in max_bytes
    }


def _python(max_bytes: dict[str, int | None], docstrings: bool) -> dict[str, list[str]]:
    files = stdlib_files()
    named: list[tuple[str, str]] = []
    # reading and parsing every file is slow: read a spread of files until there is
    # enough text for both caps and enough files (~5% go to validation by hash)
    budget = 3 * sum(v or 10**12 for v in max_bytes.values())
    step = max(1, len(files) // 400)
    for rel, path in files[::step] + [f for i, f in enumerate(files) if i % step]:
        text = _read(path)
        if text and docstrings:
            text = _docstrings(text)
        if text:
            named.append((rel, text))
            budget -= len(text)
            if budget <= 0 and len(named) >= 400:
                break
    named.sort()
    return _by_file(named, max_bytes)


def _docs(max_bytes: dict[str, int | None]) -> dict[str, list[str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    named: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "test", "tests"))
        for name in sorted(filenames):
            if name.endswith(_DOC_SUFFIXES) and not _is_license(name):
                path = Path(dirpath) / name
                text = _read(path)
                if text:
                    named.append((path.relative_to(root).as_posix(), text))
    if not named:
        raise CorpusError(f"no .rst/.txt/.md files under {root} for the 'docs' domain")
    return _by_file(named, max_bytes)


def _licenses(max_bytes: dict[str, int | None]) -> dict[str, list[str]]:
    named: list[tuple[str, str]] = []
    if _LICENSE_DIR.is_dir():
        for path in sorted(_LICENSE_DIR.iterdir()):
            text = _read(path) if path.is_file() and not path.is_symlink() else None
            if text:
                named.append((path.name, text))
    if not named:  # no Debian licence folder: installed packages' licence files
        root = Path(sysconfig.get_paths()["stdlib"])
        for path in sorted(root.rglob("*")):
            if path.is_file() and _is_license(path.name):
                text = _read(path)
                if text:
                    named.append((path.relative_to(root).as_posix(), text))
    if not named:
        raise CorpusError("no licence texts found for the 'licenses' domain")
    # few, long documents: split each one head/tail so validation covers every licence
    parts = [split_text(t) for _, t in named]
    keys = [n for n, _ in named]
    return {s: cap_bytes_spread([p[s] for p in parts], max_bytes[s], keys=keys) for s in max_bytes}


def lora_domains(
    max_train_bytes: int | None = 200_000,
    max_val_bytes: int | None = 20_000,
    names: tuple[str, ...] | list[str] = DOMAINS,
) -> Domains:
    """The built-in domains, each ``{"train": [docs], "validation": [docs]}``, capped.

    Deterministic for a given Python installation (documents are chosen by stable hashes
    of their paths).

    Args:
        max_train_bytes, max_val_bytes: caps on each domain's UTF-8 text per split.
        names: a subset of :data:`DOMAINS`.

    Example:
        >>> d = lora_domains(20_000, 2_000, names=["python", "licenses"])
        >>> sorted(d), sum(len(t.encode()) for t in d["python"]["train"]) <= 20_000
        (['licenses', 'python'], True)
    """
    caps = {"train": max_train_bytes, "validation": max_val_bytes}
    unknown = sorted(set(names) - set(DOMAINS))
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; built-in domains: {', '.join(DOMAINS)}")
    build = {
        "python": lambda: _python(caps, docstrings=False),
        "docstrings": lambda: _python(caps, docstrings=True),
        "docs": lambda: _docs(caps),
        "licenses": lambda: _licenses(caps),
    }
    return {name: build[name]() for name in names}


def _from_dataset(
    root: Path,
    caps: dict[str, int | None],
    names: list[str] | None,
    domain_column: str,
    text_column: str,
) -> Domains:
    """Domains from a ``save_to_disk`` folder: rows grouped by ``domain_column``.

    A ``DatasetDict`` with ``train`` and ``validation`` (or ``test``) splits keeps them;
    a single ``Dataset`` (or a dict with one split) is split per row by stable hashes.
    """
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as err:  # pragma: no cover - datasets is in the test extra
        raise CorpusError(f"{root} is a saved dataset; pip install datasets to read it") from err
    loaded = load_from_disk(str(root))
    if isinstance(loaded, DatasetDict):
        val_name = next((s for s in ("validation", "test") if s in loaded), None)
        if "train" in loaded and val_name:
            parts = {"train": loaded["train"], "validation": loaded[val_name]}
        elif len(loaded) == 1:
            parts = {"all": next(iter(loaded.values()))}
        else:
            raise CorpusError(f"{root}: splits {sorted(loaded)}; expected train and validation "
                              "(or test), or a single split")  # fmt: skip
    else:
        parts = {"all": loaded}
    grouped: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for split, ds in parts.items():
        missing = [c for c in (domain_column, text_column) if c not in ds.column_names]
        if missing:
            raise CorpusError(f"{root}: no column(s) {missing} (columns: {ds.column_names}); "
                              "pass --domain-column / text_column")  # fmt: skip
        for i, (dom, text) in enumerate(zip(ds[domain_column], ds[text_column], strict=True)):
            if text and (names is None or str(dom) in names):
                grouped.setdefault(str(dom), {}).setdefault(split, []).append((f"{i}", text))
    if not grouped:
        raise CorpusError(f"{root}: no rows with text (domains wanted: {names or 'all'})")
    out: Domains = {}
    for dom, splits in sorted(grouped.items()):
        if "all" in splits:
            out[dom] = _by_file(splits["all"], caps)
        else:
            out[dom] = {
                s: cap_bytes_spread([t for _, t in splits.get(s, [])], caps[s]) for s in caps
            }
            if not out[dom]["train"] or not out[dom]["validation"]:
                raise CorpusError(f"{root}: domain {dom!r} has no rows in one of the splits")
    return out


def load_domains(
    source: str | Path = "builtin",
    max_train_bytes: int | None = 200_000,
    max_val_bytes: int | None = 20_000,
    names: list[str] | None = None,
    domain_column: str = "domain",
    text_column: str = "text",
) -> Domains:
    """Domains from ``"builtin"`` (:func:`lora_domains`), a folder of domain folders or a
    saved ``datasets`` folder with a domain column.

    Args:
        source: ``"builtin"``, a folder whose sub-folders (one per domain) hold text files,
            or a ``Dataset``/``DatasetDict`` ``save_to_disk`` folder.
        names: keep only these domains (None: all).
        domain_column, text_column: the saved dataset's columns (ignored otherwise).

    Raises:
        FileNotFoundError / CorpusError: naming the folder and what it should hold.
    """
    if str(source) == "builtin":
        return lora_domains(max_train_bytes, max_val_bytes, names or DOMAINS)
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(
            f'domain folder {root} not found; pass data = "builtin" or a folder with one '
            "sub-folder of text files per domain"
        )
    caps = {"train": max_train_bytes, "validation": max_val_bytes}
    if is_saved_dataset(root):
        return _from_dataset(root, caps, names, domain_column, text_column)
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if names is not None:
        subs = [p for p in subs if p.name in names]
    if not subs:
        raise CorpusError(f"{root} has no domain sub-folders (one folder of text files each)")
    return {
        p.name: {s: load_corpus(p, s, max_bytes=cap) for s, cap in caps.items()}  # type: ignore[arg-type]
        for p in subs
    }


@dataclass(frozen=True)
class DomainMixture:
    """The training tokens of several domains; every batch mixes them in fixed shares.

    Attributes:
        tokens: domain -> flat ids ``[L_d]``, in the order rows are filled.

    Example:
        >>> mix = DomainMixture({"a": np.arange(50), "b": np.arange(100, 150)})
        >>> x, y = mix.batch(3, 4, torch.Generator().manual_seed(0))
        >>> x.shape, [int(v) >= 100 for v in x[:, 0]]  # 2 rows of a, 1 of b
        (torch.Size([3, 4]), [False, False, True])
    """

    tokens: dict[str, np.ndarray]

    def batch(
        self, rows: int, seq_len: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` LongTensors ``[rows, seq_len]``: a group of rows per domain, the
        first ``rows % D`` domains one row more, each group drawn with ``generator``."""
        names = list(self.tokens)
        per = [rows // len(names) + (i < rows % len(names)) for i in range(len(names))]
        pairs = [
            get_batch(self.tokens[n], b, seq_len, generator)
            for n, b in zip(names, per, strict=True)
            if b
        ]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


@dataclass(frozen=True)
class DomainTokens:
    """A LoRA run's data, tokenized: what ``dynroute.train.train`` reads through its hooks.

    Attributes:
        train: the training mixture; val: domain -> validation ids ``[L_d]``;
        vocab_size: the tokenizer's vocabulary size.
    """

    train: DomainMixture
    val: dict[str, np.ndarray]
    vocab_size: int


def tokenize_domains(data: Any, tokenizer: Any, seq_len: int, vocab_size: int) -> DomainTokens:
    """Load the domains of a ``[data]`` table (``LoRADataConfig``) and tokenize them.

    Training domains: ``data.domains`` (None: all); evaluation domains: ``data.eval_domains``
    (None: the training ones).

    Raises:
        ValueError: a domain with too few tokens for ``seq_len``, naming it and the remedy.
    """
    names = sorted(set((data.domains or []) + (data.eval_domains or []))) or None
    domains = load_domains(data.source, data.max_train_bytes, data.max_val_bytes, names,
                           data.domain_column, data.text_column)  # fmt: skip
    train_names = data.domains or sorted(domains)
    eval_names = data.eval_domains or train_names
    train = {n: tokenize_documents(tokenizer, domains[n]["train"]) for n in train_names}
    val = {n: tokenize_documents(tokenizer, domains[n]["validation"]) for n in eval_names}
    for name, arr in (*train.items(), *val.items()):
        if arr.shape[0] < seq_len + 2:
            raise ValueError(f"domain {name!r} has {arr.shape[0]} tokens, too few for seq_len "
                             f"{seq_len}; raise max_*_bytes or lower seq_len")  # fmt: skip
    return DomainTokens(DomainMixture(train), val, vocab_size)
