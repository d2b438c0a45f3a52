"""Atomic file writes: a reader sees the old file or the complete new one, never half.

Every file dynroute writes (checkpoints, run.json, caches, reports, figures) goes through
these helpers: a temporary file in the same folder, flushed and fsynced, then
``os.replace``-d onto the destination (atomic on POSIX and Windows).

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "run.json"
    >>> atomic_write_text(path, "{}")
    >>> path.read_text()
    '{}'
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_folder",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_tree",
]


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success ``os.replace`` it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. The file is
    made readable by everyone (``0o644``): reports and caches are meant to be shared.

    Args:
        path: final destination; its parent directory is created if missing.

    Yields:
        Path: a fresh, empty temporary file in the same directory.

    Example:
        >>> with atomic_path("/tmp/dynroute-doctest.bin") as tmp:
        ...     _ = tmp.write_bytes(b"abc")
        >>> Path("/tmp/dynroute-doctest.bin").read_bytes()
        b'abc'
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # on disk before the rename: a power cut keeps one
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Atomically write ``data`` to ``path``.

    Example:
        >>> atomic_write_bytes("/tmp/dynroute-doctest.png", b"\\x89PNG")
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``.

    Example:
        >>> atomic_write_text("/tmp/dynroute-doctest.json", "{}")
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    """``torch.save(obj)`` to ``path`` atomically (a killed run keeps its last checkpoint).

    Example:
        >>> import torch
        >>> atomic_torch_save({"step": 3}, "/tmp/dynroute-doctest.pt")
        >>> torch.load("/tmp/dynroute-doctest.pt")["step"]
        3
    """
    import torch  # here: the rest of this module is cheap to import

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def fsync_tree(folder: Path | str) -> None:
    """Flush every entry of ``folder`` and the folder itself to disk (before a rename)."""
    folder = Path(folder)
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it replaces ``path``.

    The new folder is fsynced and made readable by everyone (``0o755``), the old one (if
    any) moves aside to ``.<name>.old`` and the new one is renamed in, then the old one is
    removed: a reader sees the old folder or the complete new one. On an exception the
    temporary folder is removed and ``path`` is untouched.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "router"
        >>> with atomic_folder(out) as tmp:
        ...     _ = (tmp / "config.json").write_text("{}")
        >>> sorted(p.name for p in out.iterdir())
        ['config.json']
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; a saved folder is meant to be shared
        fsync_tree(tmp)
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_tree(final.parent)  # the renames themselves
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
