"""The proxy's decision log: one JSON line per request, flushed as it is written.

A row holds ``time`` (ISO 8601, UTC), ``query_sha256`` (never the text), the decision and
its outcome (:meth:`dynroute.serve.proxy_routes.Exchange.finish`; the fields are listed in
docs/serving.md): with the graded answers, an outcome table for ``dynroute llm eval``.
Each line is strict JSON (:func:`~dynroute.common.jsonfile.json_text`: a non-finite
number is written ``null``, never ``Infinity``), so every JSON reader takes the file.

Example:
    >>> import tempfile, json, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.jsonl"
    >>> with DecisionLog(path) as log:
    ...     log.write({"chosen": "small", "status": 200})
    ...     log.write({"chosen": "big", "knob": float("inf")})
    >>> [json.loads(line)["knob"] for line in path.read_text().splitlines()[1:]]
    [None]
    >>> json.loads(path.read_text().splitlines()[0])["chosen"], query_hash("hi")[:12]
    ('small', '8f434346648f')
    >>> query_hash(chr(0xD800))[:12]  # a lone surrogate: its escaped bytes are hashed
    '91a681b99855'
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynroute.common.jsonfile import json_text

if TYPE_CHECKING:
    from dynroute.serve.store import Store

__all__ = ["DecisionLog", "query_hash"]


def query_hash(text: str) -> str:
    """sha256 hex digest of the UTF-8 text (a lone surrogate, which UTF-8 cannot encode, as
    its ``surrogatepass`` bytes: any string a JSON body holds has a hash)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class DecisionLog:
    """Append rows to a JSONL file (None: keep nothing); each line is flushed at once,
    so a crash loses no finished request. With a ``store`` (``--db``), each row also goes
    to its ``dynroute_decisions`` table (queued; the store's owner closes it)."""

    def __init__(self, path: str | Path | None, store: Store | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.store = store
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", buffering=1)

    def write(self, row: dict[str, Any]) -> None:
        if self._file is None and self.store is None:
            return
        stamped = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **row}
        line = json_text(stamped, indent=None)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        if self.store is not None:
            self.store.add_decision(stamped, line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
