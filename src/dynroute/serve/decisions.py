"""The proxy's decision log: one JSON line per request, flushed as it is written.

A row holds ``time`` (ISO 8601, UTC), ``query_sha256`` (the text only with
``log_queries``: ``llm serve --log-queries``), the decision and its outcome
(:meth:`dynroute.serve.proxy_routes.Exchange.finish`; the fields are listed in
docs/serving.md), with ``response_id``: the ``id`` of the answer the client got. A
``POST /v1/feedback`` on that id is a row of its own, ``{"kind": "feedback", "response_id",
"score", "model", "query_sha256"}`` (:meth:`DecisionLog.feedback`); ``dynroute llm update``
joins it to its decision (:mod:`dynroute.llm.feedback`).
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

    Feedback on an answer the log holds (reopened: the ids of its earlier rows are known):
    >>> with DecisionLog(path) as log:
    ...     log.write({"response_id": "cmpl-1", "chosen": "small", "query_sha256": "ab"})
    >>> with DecisionLog(path) as log:
    ...     log.feedback("cmpl-1", 0.0)["query_sha256"], log.feedback("cmpl-2", 1.0)
    ('ab', None)
    >>> json.loads(path.read_text().splitlines()[-1])["kind"]
    'feedback'
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynroute.common.jsonfile import json_text

if TYPE_CHECKING:
    from dynroute.serve.store import Store

__all__ = ["FEEDBACK", "REMEMBERED", "DecisionLog", "query_hash"]

#: the ``kind`` of a feedback row (a decision row has no ``kind``)
FEEDBACK = "feedback"
#: how many answers' ids the proxy keeps for feedback (the latest; older ones: 404)
REMEMBERED = 100_000


def query_hash(text: str) -> str:
    """sha256 hex digest of the UTF-8 text (a lone surrogate, which UTF-8 cannot encode, as
    its ``surrogatepass`` bytes: any string a JSON body holds has a hash)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class DecisionLog:
    """Append rows to a JSONL file (None: keep nothing); each line is flushed at once,
    so a crash loses no finished request. With a ``store`` (``--db``), each row also goes
    to its ``dynroute_decisions`` table (queued; the store's owner closes it).
    ``log_queries``: decision rows also hold the query's text (``query``), which
    ``dynroute llm update`` needs to learn from feedback (off by default: privacy).

    The ids of the last :data:`REMEMBERED` answers (those of the file's earlier rows
    included, read when it is opened) are kept for :meth:`feedback`."""

    def __init__(
        self, path: str | Path | None, store: Store | None = None, log_queries: bool = False
    ) -> None:
        self.path = None if path is None else Path(path)
        self.store = store
        self.log_queries = log_queries
        self._file = None
        #: response id -> what feedback on it repeats from its decision
        self._answers: OrderedDict[str, dict[str, Any]] = OrderedDict()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file():
                self._remember_file(self.path)
            self._file = self.path.open("a", encoding="utf-8", buffering=1)

    @property
    def keeps(self) -> bool:
        """Whether rows go anywhere (a file or a store)."""
        return self._file is not None or self.store is not None

    def _remember_file(self, path: Path) -> None:
        """Know the ids of the answers an earlier run logged (a torn last line is skipped)."""
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if '"response_id"' not in line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    self._remember(row)

    def _remember(self, row: dict[str, Any]) -> None:
        rid = row.get("response_id")
        if not isinstance(rid, str) or row.get("kind") is not None:
            return
        self._answers[rid] = {"query_sha256": row.get("query_sha256")}
        self._answers.move_to_end(rid)
        while len(self._answers) > REMEMBERED:
            self._answers.popitem(last=False)

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
        self._remember(row)

    def feedback(
        self, response_id: str, score: float, model: str | None = None
    ) -> dict[str, Any] | None:
        """Log a score in [0, 1] for the answer ``response_id`` (``model``: the router
        model or backend the score is about, when not the one that answered); the row
        written, or None for an id this log does not know (nothing written)."""
        answer = self._answers.get(response_id)
        if answer is None:
            return None
        row = {
            "kind": FEEDBACK,
            "response_id": response_id,
            "score": score,
            "model": model,
            "query_sha256": answer["query_sha256"],
        }
        self.write(row)
        return row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
