"""Cache location and fingerprints for the data layer (writes: :mod:`dynroute.common.files`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["CACHE_ENV_VAR", "default_cache_dir", "fingerprint"]

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
