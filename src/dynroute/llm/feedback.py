"""Learning from feedback: a proxy's decision log → outcome rows → an updated router.

``dynroute llm serve --log FILE --log-queries`` writes one row per decision (with the
query's text and the answer's ``response_id``) and, for each ``POST /v1/feedback``, a row
``{"kind": "feedback", "response_id", "score", "model"}``. :func:`feedback_table` joins each
feedback row to its decision: the score is the quality of the model that answered (or of
the ``model`` the feedback names), its cost the decision's cost. A table needs every
model's outcome on each query, which feedback never gives: the other models' cells are the
router's own predictions (and cost estimates), so the refit moves only where feedback
says something. Several scores of one (query, model) are averaged.

Feedback that cannot be used is counted by reason (:data:`SKIP_REASONS`): its decision
is not in the log, was logged without its text (no ``--log-queries``: the default keeps
only a hash, for privacy), failed, or names a model the router does not know.

:func:`update_router` merges the rows into the table the router was fitted on (when
given: a feedback query already in it has the fed-back cells replaced) and refits the
same router spec with a fresh embedder of the same spec on the merged queries; the λ is
kept. No shipped router learns incrementally, so every update is a refit.

Example:
    >>> import json, tempfile, pathlib
    >>> from dynroute.llm.data import OutcomeTable
    >>> from dynroute.llm.routers import make_query_router
    >>> base = OutcomeTable.from_rows(["add 1 2", "poem on sea"], ["small", "big"],
    ...                               [[1, 1], [0, 1]], [[0.001, 0.01]] * 2)
    >>> r = make_query_router("knn:k=1").fit(base)
    >>> log = pathlib.Path(tempfile.mkdtemp()) / "decisions.jsonl"
    >>> rows = [{"response_id": "c1", "query": "add 5 6", "router_model": "small",
    ...          "status": 200, "cost": 0.001},
    ...         {"response_id": "c2", "query_sha256": "9f0e", "router_model": "small",
    ...          "status": 200, "cost": 0.001},
    ...         {"kind": "feedback", "response_id": "c1", "score": 0.0},
    ...         {"kind": "feedback", "response_id": "c2", "score": 0.0}]
    >>> _ = log.write_text("".join(json.dumps(x) + "\\n" for x in rows))
    >>> got = feedback_table(log, r)
    >>> got.table.queries, got.table.quality[0].tolist(), got.used, dict(got.skipped)
    (('add 5 6',), [0.0, 1.0], 1, {'logged without its query text (serve with --log-queries)': 1})
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynroute.common.files import atomic_folder
from dynroute.llm.data import OutcomeTable, TableError, load_table
from dynroute.llm.embed import make_embedder
from dynroute.llm.routers import QueryRouter, load_router, make_query_router

__all__ = [
    "SKIP_REASONS",
    "FeedbackRows",
    "feedback_table",
    "merge_tables",
    "read_log",
    "save_router_atomically",
    "update_router",
]

#: Why a feedback row cannot become an outcome (the keys of ``FeedbackRows.skipped``).
SKIP_REASONS = {
    "no_decision": "its decision is not in the log",
    "no_text": "logged without its query text (serve with --log-queries)",
    "failed": "its request failed (no answer to score)",
    "unknown_model": "names a model the router does not know",
    "bad_score": "its score is not a number from 0 to 1",
}


@dataclass
class FeedbackRows:
    """What a decision log's feedback gives a router.

    Attributes:
        table: one row per fed-back query over the router's models (None: no usable
            feedback); cells nobody scored hold the router's predictions and estimates.
        feedback: feedback rows read.
        used: feedback rows that became a cell (``feedback - used`` were skipped).
        skipped: reason (a value of :data:`SKIP_REASONS`) -> how many.
        unreadable: lines of the log that are not a JSON object (a torn last line).
        scored: ``[Q, M]`` bool, the cells of ``table`` feedback set (None with no table).
    """

    table: OutcomeTable | None
    feedback: int = 0
    used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    scored: np.ndarray | None = None


def read_log(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """``(the log's rows, how many lines were not a JSON object)``; a missing file is a
    ``FileNotFoundError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: no such decision log; pass the file `dynroute llm serve --log FILE` wrote "
            "(or `dynroute llm export-log --db ... --out FILE`)"
        )
    rows, bad = [], 0
    with p.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


def feedback_table(log: str | Path, router: QueryRouter) -> FeedbackRows:
    """Join each feedback row of ``log`` to its decision (see the module doc); raises
    ``ValueError`` naming the log when it holds no feedback at all."""
    rows, unreadable = read_log(log)
    decisions = {r["response_id"]: r for r in rows if "kind" not in r and "response_id" in r}
    # a backend's name -> the router's model it serves (the feedback's "model" may be either)
    to_model = {r["chosen"]: r["router_model"] for r in decisions.values() if r.get("chosen")}
    fed = [r for r in rows if r.get("kind") == "feedback"]
    if not fed:
        raise ValueError(
            f"{log}: no feedback rows among its {len(rows)} rows; POST /v1/feedback "
            '{"id": <response id>, "score": 0..1} to the proxy that wrote it, then update'
        )
    out = FeedbackRows(None, feedback=len(fed), unreadable=unreadable)
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    costs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for fb in fed:
        decision = decisions.get(fb.get("response_id"))
        model = fb.get("model") or (decision or {}).get("router_model")
        model = to_model.get(model, model)
        reason, score = None, fb.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            reason = "bad_score"
        elif decision is None:
            reason = "no_decision"
        elif not isinstance(decision.get("query"), str):
            reason = "no_text"
        elif not fb.get("model") and (decision.get("status") or 500) >= 400:
            reason = "failed"
        elif model not in router.models:
            reason = "unknown_model"
        if reason is not None:
            out.skipped[SKIP_REASONS[reason]] += 1
            continue
        key = (decision["query"], model)
        scores[key].append(float(score))
        if model == decision.get("router_model") and decision.get("cost") is not None:
            costs[key].append(float(decision["cost"]))
        out.used += 1
    if scores:
        out.table, out.scored = filled_table(router, scores, costs, str(log))
    return out


def filled_table(
    router: QueryRouter,
    scores: dict[tuple[str, str], list[float]],
    costs: dict[tuple[str, str], list[float]],
    source: str,
) -> tuple[OutcomeTable, np.ndarray]:
    """The fed-back queries over ``router.models``: the mean score (and paid cost) where
    there is one, the router's prediction (and cost estimate) elsewhere; and which cells
    were scored (``[Q, M]`` bool)."""
    queries = list(dict.fromkeys(q for q, _ in scores))
    row = {q: i for i, q in enumerate(queries)}
    col = {m: j for j, m in enumerate(router.models)}
    quality = router.predict(queries).double().numpy().clip(0.0, 1.0)
    cost = router.estimate_cost(queries).double().numpy().copy()
    scored = np.zeros(quality.shape, dtype=bool)
    for (q, m), s in scores.items():
        quality[row[q], col[m]] = float(np.mean(s))
        scored[row[q], col[m]] = True
    for (q, m), c in costs.items():
        cost[row[q], col[m]] = float(np.mean(c))
    table = OutcomeTable.from_rows(queries, router.models, quality, cost, source=source)
    return table, scored


def merge_tables(
    base: OutcomeTable, extra: OutcomeTable, scored: np.ndarray | None = None
) -> OutcomeTable:
    """``base`` (aligned to ``extra``'s models) and then ``extra``'s queries it lacks; for
    a query both hold, ``extra``'s cells where ``scored`` (``[Q_extra, M]`` bool; None:
    every cell) replace ``base``'s.

    Example:
        >>> a = OutcomeTable.from_rows(["q1", "q2"], ["s", "b"], [[1, 1], [0, 1]], [[1, 2]] * 2)
        >>> b = OutcomeTable.from_rows(["q2", "q3"], ["s", "b"], [[1, 0], [0, 0]], [[1, 2]] * 2)
        >>> m = merge_tables(a, b, np.array([[True, False], [True, False]]))
        >>> m.queries, m.quality.tolist()
        (('q1', 'q2', 'q3'), [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    """
    base = base.aligned_to(extra.models)
    scored = np.ones(extra.quality.shape, dtype=bool) if scored is None else scored
    index = {q: i for i, q in enumerate(base.queries)}
    quality, cost = base.quality.copy(), base.cost.copy()
    for i, q in enumerate(extra.queries):
        if q in index:
            cells = scored[i]
            quality[index[q], cells] = extra.quality[i, cells]
            cost[index[q], cells] = extra.cost[i, cells]
    new = [i for i, q in enumerate(extra.queries) if q not in index]
    return OutcomeTable.from_rows(
        [*base.queries, *(extra.queries[i] for i in new)],
        extra.models,
        np.vstack([quality, extra.quality[new]]),
        np.vstack([cost, extra.cost[new]]),
        source=f"{base.source} + {extra.source}",
    )


def save_router_atomically(router: QueryRouter, out: str | Path) -> Path:
    """Save ``router`` into the folder ``out`` whole or not at all: written beside it,
    then renamed over it (an ``out`` that exists must be a fitted query router)."""
    final = Path(out)
    if final.exists() and not (final / "config.json").is_file():
        raise FileExistsError(
            f"--out {final} exists and is not a fitted query router; pick a new folder"
        )
    with atomic_folder(final) as tmp:
        router.save(tmp)
    return final


def update_router(
    router_dir: str | Path,
    log: str | Path,
    out: str | Path,
    table: str | Path | None = None,
) -> dict[str, Any]:
    """Refit the router saved in ``router_dir`` on its table ``table`` (optional: the one
    it was fitted on) plus the feedback in ``log``; save it to ``out`` (atomically). A
    summary: ``rows`` (the table fitted on), ``feedback``, ``used``, ``skipped`` (reason
    -> count), ``queries`` (fed-back queries), ``unreadable``, ``router``, ``out``.

    Raises:
        FileNotFoundError: ``router_dir``, ``log`` or ``table`` missing (naming it).
        ValueError: a log without feedback, or whose feedback is all unusable (saying why).
    """
    old = load_router(router_dir)
    base = None
    if table is not None:
        if not Path(table).is_file():
            raise FileNotFoundError(
                f"--table {table}: no such file; pass the table the router was fitted on"
            )
        base = load_table(table)
    rows = feedback_table(log, old)
    if rows.table is None:
        why = "; ".join(f"{n} {reason}" for reason, n in rows.skipped.items())
        raise ValueError(f"{log}: none of its {rows.feedback} feedback rows is usable ({why})")
    fed = rows.table
    try:
        merged = fed if base is None else merge_tables(base, fed, rows.scored)
    except TableError as err:
        raise ValueError(f"--table: {err}") from None
    new = refit_like(old, merged)
    save_router_atomically(new, out)
    return {
        "router": new.name, "out": str(out), "rows": merged.num_queries,
        "queries": fed.num_queries, "feedback": rows.feedback, "used": rows.used,
        "skipped": dict(rows.skipped), "unreadable": rows.unreadable,
    }  # fmt: skip


def refit_like(old: QueryRouter, table: OutcomeTable) -> QueryRouter:
    """A router of ``old``'s spec and seed fitted on ``table``, its view of the queries a
    fresh embedder of ``old``'s spec fitted on them; ``old``'s λ kept."""
    new = make_query_router(old.to_dict())
    view = None
    if new.uses_embedding and old.embedder is not None:
        view = make_embedder(old.embedder.config()).fit(table.queries)
    new.fit(table, view)
    new.lam = old.lam
    return new
