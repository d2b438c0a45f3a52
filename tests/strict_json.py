"""JSON as strict parsers read it (JavaScript's JSON.parse, jq, serde): NaN and Infinity
are not JSON, so a file holding them is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def refuse_constant(name: str) -> Any:
    """``parse_constant`` for :func:`json.loads`: NaN, Infinity, -Infinity are errors."""
    raise ValueError(f"{name} is not JSON (a strict parser refuses the file)")


def load_strict(path: Path | str) -> Any:
    """The JSON file at ``path``, refused (ValueError) when it holds NaN or Infinity."""
    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse_constant)
