"""Text corpora: the built-in stdlib corpus, user files/folders and saved ``datasets``.

Every loader returns a plain ``list[str]`` of documents for one split. Splits are
deterministic: folders are split *by file* using a hash of the relative path, a single
file or an un-split dataset is split head/tail (last ~5% is validation).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynroute.data.cache import fingerprint
from dynroute.data.splitting import (
    VALIDATION_FRACTION,
    Split,
    cap_bytes,
    cap_bytes_spread,
    check_split,
    split_names,
    split_text,
)

__all__ = [
    "STDLIB_EXCLUDED_DIRS",
    "CorpusError",
    "corpus_key",
    "is_saved_dataset",
    "load_corpus",
    "stdlib_corpus",
    "stdlib_files",
]

SPLIT_RULES_VERSION = 1
STDLIB_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
_SKIPPED_USER_DIRS = frozenset({"__pycache__", "node_modules"})
_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json")
_BINARY_SNIFF_BYTES = 8192


class CorpusError(ValueError):
    """A corpus source is missing, empty or unusable (the message says how to fix it)."""


# ----------------------------------------------------------------------------- stdlib


def stdlib_files() -> list[tuple[str, Path]]:
    """List the standard library's ``.py`` files, sorted by relative POSIX path.

    Walks ``sysconfig.get_paths()["stdlib"]`` skipping any directory named in
    :data:`STDLIB_EXCLUDED_DIRS` (``test``, ``tests``, ``site-packages``, ...).

    Returns:
        list[tuple[str, Path]]: ``(relative_posix_path, absolute_path)`` pairs.

    Example:
        >>> rel, path = stdlib_files()[0]
        >>> rel.endswith(".py") and path.is_file()
        True
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise CorpusError(
            f"the Python standard library folder {root} was not found; pass a corpus "
            "path (a text file, a folder of text files or a saved datasets folder) instead"
        )
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                out.append((path.relative_to(root).as_posix(), path))
    out.sort(key=lambda item: item[0])
    return out


def _read_utf8(path: Path) -> str | None:
    """Read a text file as UTF-8; ``None`` if undecodable, binary-looking or unreadable."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def stdlib_corpus(split: Split, max_bytes: int | None = None) -> list[str]:
    """Documents (one per stdlib ``.py`` file) of the built-in, download-free corpus.

    Files are split by a stable hash of their relative path (~5% validation), so the
    split is identical on every run and machine with the same Python version.

    Args:
        split: ``"train"`` or ``"validation"``.
        max_bytes: optional cap on the total UTF-8 size; a deterministic pseudo-random
            subset of files spread over the whole library is kept (still sorted).

    Returns:
        list[str]: file contents, sorted by relative path (about 12 MB for train).

    Example:
        >>> docs = stdlib_corpus("validation", max_bytes=100_000)
        >>> sum(len(d.encode()) for d in docs) <= 100_000
        True
    """
    split = check_split(split)
    files = stdlib_files()
    chosen = set(split_names([rel for rel, _ in files])[split])
    rels: list[str] = []
    docs: list[str] = []
    for rel, path in files:
        if rel in chosen:
            text = _read_utf8(path)
            if text:
                rels.append(rel)
                docs.append(text)
    return cap_bytes_spread(docs, max_bytes, keys=rels)


# ----------------------------------------------------------------------------- user paths


def _iter_user_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Yield ``(relative_posix_path, path)`` for non-hidden regular files under ``root``."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIPPED_USER_DIRS]
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and path.is_file():
                yield path.relative_to(root).as_posix(), path


def _folder_texts(root: Path) -> list[tuple[str, str]]:
    """All decodable, non-empty text files of a folder as sorted ``(rel, text)`` pairs."""
    out = []
    for rel, path in sorted(_iter_user_files(root)):
        text = _read_utf8(path)
        if text and text.strip():
            out.append((rel, text))
    return out


def is_saved_dataset(path: Path) -> bool:
    """True if ``path`` is a folder written by ``datasets``' ``save_to_disk``.

    Args:
        path: any path.

    Returns:
        bool: the folder holds ``dataset_info.json`` or ``dataset_dict.json``.

    Example:
        >>> is_saved_dataset(Path("/nonexistent"))
        False
    """
    return path.is_dir() and any((path / m).is_file() for m in _DATASET_MARKERS)


def _load_file(path: Path, split: Split) -> list[str]:
    text = _read_utf8(path)
    if text is None:
        raise CorpusError(
            f"corpus file {path} is not UTF-8 text; convert it to UTF-8 or pass a folder"
        )
    part = split_text(text, VALIDATION_FRACTION)[split]
    return [part] if part else []


def _load_folder(path: Path, split: Split) -> tuple[list[str], list[str]]:
    """Documents of one split of a folder and their relative paths (same order)."""
    texts = _folder_texts(path)
    if not texts:
        raise CorpusError(
            f"corpus folder {path} contains no readable UTF-8 text files; add .txt/.md/.py "
            "files (hidden files and binary files are ignored)"
        )
    if len(texts) == 1:
        rel, text = texts[0]
        part = split_text(text, VALIDATION_FRACTION)[split]
        return ([rel], [part]) if part else ([], [])
    chosen = set(split_names([rel for rel, _ in texts])[split])
    picked = [(rel, text) for rel, text in texts if rel in chosen]
    return [rel for rel, _ in picked], [text for _, text in picked]


# ----------------------------------------------------------------------------- datasets


def _import_datasets() -> Any:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError(
            "loading a saved `datasets` folder needs the optional `datasets` package; "
            "install it with `pip install dynroute[datasets]` (or `pip install datasets`)"
        ) from exc
    return datasets


_VALIDATION_ALIASES = ("validation", "valid", "val", "dev", "test")


def _column_texts(ds: Any, column: str, where: str) -> list[str]:
    names = list(ds.column_names)
    if column not in names:
        raise CorpusError(
            f"{where} has no column {column!r} (columns: {names}); pass the text column "
            "name via text_column=..."
        )
    out = []
    for value in ds[column]:
        if value is None:
            continue
        if not isinstance(value, str):
            raise CorpusError(
                f"column {column!r} of {where} holds {type(value).__name__}, not str; "
                "choose a text column via text_column=..."
            )
        if value:
            out.append(value)
    return out


def _tail_split(rows: list[str], split: Split) -> list[str]:
    if len(rows) < 2:
        return rows if split == "train" else []
    n_val = max(1, round(len(rows) * VALIDATION_FRACTION))
    return rows[:-n_val] if split == "train" else rows[-n_val:]


def _load_saved_dataset(path: Path, split: Split, text_column: str) -> list[str]:
    datasets = _import_datasets()
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, dict):  # DatasetDict is a dict subclass
        keys = list(ds.keys())
        val_key = next((k for k in _VALIDATION_ALIASES if k in ds), None)
        if "train" in ds and val_key is not None:
            key = "train" if split == "train" else val_key
            return _column_texts(ds[key], text_column, f"dataset {path} split {key!r}")
        if "train" in ds:
            rows = _column_texts(ds["train"], text_column, f"dataset {path} split 'train'")
            return _tail_split(rows, split)
        if len(keys) == 1:
            rows = _column_texts(ds[keys[0]], text_column, f"dataset {path} split {keys[0]!r}")
            return _tail_split(rows, split)
        raise CorpusError(
            f"dataset {path} has splits {keys} but no 'train' split; save it with a 'train' "
            "(and optionally 'validation') split"
        )
    return _tail_split(_column_texts(ds, text_column, f"dataset {path}"), split)


# ----------------------------------------------------------------------------- public


def _resolve_source(source: str | Path | None) -> Path | None:
    """``None`` for the built-in stdlib corpus, else an existing path (or CorpusError)."""
    if source is None or (isinstance(source, str) and source.strip().lower() == "stdlib"):
        return None
    path = Path(source).expanduser()
    if not path.exists():
        raise CorpusError(
            f"corpus path {str(source)!r} does not exist; pass an existing text file, a folder "
            "of text files, a folder saved with datasets' save_to_disk, or 'stdlib' / None "
            "for the built-in corpus"
        )
    if not (path.is_file() or path.is_dir()):
        raise CorpusError(f"corpus path {path} is neither a regular file nor a folder")
    return path.resolve()


def load_corpus(
    source: str | Path | None,
    split: Split,
    *,
    text_column: str = "text",
    max_bytes: int | None = None,
) -> list[str]:
    """Load one split of a corpus as a list of documents.

    Sources:
        * ``None`` or ``"stdlib"``: the built-in stdlib corpus (:func:`stdlib_corpus`).
        * a text file: head ~95% (cut at a line boundary) is train, tail is validation.
        * a folder: every non-hidden UTF-8 regular file, recursively (binary files
          skipped), one document per file, split by file via a hash of the path
          (a folder with a single text file is split like a single file).
        * a ``save_to_disk`` folder (has ``dataset_info.json``/``dataset_dict.json``):
          loaded with ``datasets.load_from_disk``; uses column ``text_column`` and the
          ``train``/``validation`` splits if present, else the last ~5% rows as validation.

    Args:
        source: see above.
        split: ``"train"`` or ``"validation"``.
        text_column: column holding the text for saved datasets.
        max_bytes: optional cap on the total UTF-8 size of the returned documents
            (folders/stdlib: a deterministic spread-out subset of files; a single file or
            a dataset: the leading part).

    Returns:
        list[str]: non-empty documents, deterministic order.

    Raises:
        CorpusError: missing path, no text, empty split, bad column.
        ImportError: a saved dataset is given but ``datasets`` is not installed.

    Example:
        >>> docs = load_corpus("stdlib", "validation", max_bytes=10_000)
        >>> isinstance(docs[0], str)
        True
    """
    split = check_split(split)
    path = _resolve_source(source)
    if path is None:
        docs = stdlib_corpus(split, max_bytes=max_bytes)
    elif is_saved_dataset(path):
        docs = cap_bytes(_load_saved_dataset(path, split, text_column), max_bytes)
    elif path.is_dir():
        names, folder_docs = _load_folder(path, split)
        docs = cap_bytes_spread(folder_docs, max_bytes, keys=names)
    else:
        docs = cap_bytes(_load_file(path, split), max_bytes)
    if not docs:
        where = "the built-in stdlib corpus" if path is None else str(path)
        raise CorpusError(
            f"the {split!r} split of {where} is empty; add more text (a single file needs "
            "at least a few lines, a folder at least two text files)"
        )
    return docs


def _stat_listing(root: Path) -> list[tuple[str, int, int]]:
    rows = []
    for rel, path in sorted(_iter_user_files(root)):
        st = path.stat()
        rows.append((rel, st.st_size, st.st_mtime_ns))
    return rows


def corpus_key(source: str | Path | None, *, text_column: str = "text") -> str:
    """A short string identifying a corpus' content cheaply (paths, sizes, mtimes).

    Changes whenever files are added, removed, resized or touched; used to key the
    tokenizer and token caches. For the stdlib it depends only on the Python version
    and the relative paths/sizes, so it is stable across machines.

    Args:
        source: same as :func:`load_corpus`.
        text_column: column used for saved datasets (part of the key).

    Returns:
        str: e.g. ``"stdlib-py3.11-1a2b3c4d5e6f7a8b"``.

    Example:
        >>> corpus_key(None) == corpus_key("stdlib")
        True
    """
    path = _resolve_source(source)
    if path is None:
        listing = [(rel, p.stat().st_size) for rel, p in stdlib_files()]
        version = f"py{sys.version_info.major}.{sys.version_info.minor}"
        return f"stdlib-{version}-{fingerprint(SPLIT_RULES_VERSION, listing)}"
    if path.is_file():
        st = path.stat()
        digest = fingerprint(SPLIT_RULES_VERSION, str(path), st.st_size, st.st_mtime_ns)
        return f"file-{path.name}-{digest}"
    kind = "dataset" if is_saved_dataset(path) else "dir"
    column = text_column if kind == "dataset" else None
    digest = fingerprint(SPLIT_RULES_VERSION, str(path), column, _stat_listing(path))
    return f"{kind}-{path.name}-{digest}"
