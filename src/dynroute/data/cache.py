"""Cache location, fingerprints and atomic file writes for the data layer."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "CACHE_ENV_VAR",
    "atomic_path",
    "atomic_write_text",
    "default_cache_dir",
    "fingerprint",
]

CACHE_ENV_VAR = "DYNROUTE_CACHE"


def default_cache_dir() -> Path:
    """Return the cache root: ``$DYNROUTE_CACHE`` if set, else ``~/.cache/dynroute``.

    Returns:
        Path: an absolute, user-expanded directory path (not created here).

    Example:
        >>> default_cache_dir().is_absolute()  # e.g. /root/.cache/dynroute
        True
    """
    env = os.environ.get(CACHE_ENV_VAR)
    base = Path(env) if env else Path("~/.cache/dynroute")
    return base.expanduser().absolute()


def fingerprint(*parts: object, length: int = 16) -> str:
    """Stable hex digest of JSON-serialisable ``parts`` (same on every run and machine).

    Args:
        parts: values serialisable by ``json.dumps`` (str, int, float, None, lists, dicts).
        length: number of hex characters to keep (<= 64).

    Returns:
        str: ``length`` lowercase hex characters.

    Example:
        >>> fingerprint("stdlib", 4096) == fingerprint("stdlib", 4096)
        True
        >>> len(fingerprint("x"))
        16
    """
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success ``os.replace`` it onto ``path``.

    Readers never observe a half-written file: either the old file or the complete
    new one. On an exception the temporary file is removed and ``path`` is untouched.

    Args:
        path: final destination; its parent directory is created if missing.

    Yields:
        Path: a fresh temporary file path in the same directory (already exists, empty).

    Example:
        >>> with atomic_path("/tmp/out.bin") as tmp:
        ...     _ = tmp.write_bytes(b"abc")
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp uses 0600; cache files are meant to be shareable
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``.

    Args:
        path: destination file.
        text: full file contents.

    Example:
        >>> atomic_write_text("/tmp/meta.json", "{}")
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
