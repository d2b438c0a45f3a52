"""``metrics.jsonl``: append-only metric lines that a resumed run rewinds to its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynroute.common.files import atomic_write_text

__all__ = ["MetricsLog", "read_metrics"]


def read_metrics(path: Path | str, kind: str | None = None) -> list[dict[str, Any]]:
    """All JSON lines of a metrics file (optionally only those with ``"kind" == kind``).

    A truncated last line (the process was killed mid-write) is ignored.

    Example:
        >>> log = MetricsLog("/tmp/m-doctest.jsonl", resume_step=0)
        >>> log.write({"kind": "train", "step": 1, "loss": 2.5})
        >>> read_metrics("/tmp/m-doctest.jsonl", "train")[0]["loss"]
        2.5
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or row.get("kind") == kind:
            rows.append(row)
    return rows


class MetricsLog:
    """Append metric dicts as JSON lines, flushed per line.

    Args:
        path: the ``.jsonl`` file.
        resume_step: lines with ``step > resume_step`` are dropped on open (they belong
            to steps the resumed run is about to redo); 0 starts a fresh file.
    """

    def __init__(self, path: Path | str, resume_step: int) -> None:
        self.path = Path(path)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        text = "".join(json.dumps(r) + "\n" for r in kept) if resume_step > 0 else ""
        atomic_write_text(self.path, text)

    def write(self, row: dict[str, Any]) -> None:
        """Append one line."""
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
