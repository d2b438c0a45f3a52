"""JSON that every parser reads: non-finite floats become ``null``, never ``NaN``.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default; they are not JSON, and
strict parsers (JavaScript's ``JSON.parse``, ``jq``, Go, Rust's serde) refuse the whole
file. Every results file dynroute writes (``results.json`` of the demo, the frontier's
JSON, ``stats.json`` of an analysis, the benchmarks' results) goes through
:func:`json_text`: it turns NaN and ±inf into ``None`` first, then dumps with
``allow_nan=False``, so a non-finite float that slipped through would raise instead of
producing a file no one else can read.

Example:
    >>> print(json_text({"margin": float("nan"), "loss": 2.5, "path": Path("runs/a")}, None))
    {"margin": null, "loss": 2.5, "path": "runs/a"}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynroute.common.files import atomic_write_text

__all__ = ["finite_or_none", "json_text", "write_json"]


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN / ±inf float (nested in dicts, lists, tuples) as ``None``.

    Example:
        >>> finite_or_none({"a": [1.0, float("inf")], "b": (float("nan"), "x")})
        {'a': [1.0, None], 'b': [None, 'x']}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def json_text(value: Any, indent: int | None = 2, ensure_ascii: bool = True) -> str:
    """``value`` as strict JSON text (non-finite floats as ``null``, paths as strings;
    ``ensure_ascii=False`` keeps non-ASCII characters as they are).

    Raises:
        TypeError: a value JSON cannot hold (other than a path).

    Example:
        >>> json_text([float("-inf"), 1], indent=None)
        '[null, 1]'
    """
    return json.dumps(
        finite_or_none(value),
        indent=indent,
        ensure_ascii=ensure_ascii,
        allow_nan=False,  # a non-finite float left over is an error, never a NaN in the file
        default=_default,
    )


def write_json(
    path: Path | str, value: Any, indent: int | None = 2, ensure_ascii: bool = True
) -> None:
    """Atomically write ``value`` to ``path`` as strict JSON (:func:`json_text`, a final
    newline).

    Example:
        >>> write_json("/tmp/dynroute-doctest-results.json", {"margin": float("nan")})
        >>> Path("/tmp/dynroute-doctest-results.json").read_text()
        '{\\n  "margin": null\\n}\\n'
    """
    atomic_write_text(path, json_text(value, indent, ensure_ascii) + "\n")
