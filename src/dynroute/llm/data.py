"""Outcome tables: which model answered which query how well, and at what cost.

An :class:`OutcomeTable` is the one type every router, metric and report works on:
``Q`` queries × ``M`` models, a quality matrix ``[Q, M]`` (correctness or a score in
[0, 1]), a cost matrix ``[Q, M]`` (USD per call) and the model names. Loaders read the
shipped datasets (:func:`load_dataset`), RouterBench's wide table (CSV or pandas
pickle), a long table of ``query, model, quality, cost`` rows (JSONL or CSV; a row with a
truthy ``missing`` field, as ``dynroute llm collect`` writes for a backend that did not
answer, drops its query with a warning) and our own
wide JSONL (``{"query", "quality": {model: q}, "cost": {model: c}}`` per line, gzipped or
not). Malformed input raises :class:`TableError`, whose message names the file and the
fix.

Example:
    >>> t = OutcomeTable.from_rows(["2+2?", "capital of France?"], ["small", "big"],
    ...                            [[1, 1], [0, 1]], [[0.1, 1.0], [0.1, 1.0]])
    >>> t.quality.shape, t.models
    ((2, 2), ('small', 'big'))
    >>> t.single_model_points()
    [('small', 0.1, 0.5), ('big', 1.0, 1.0)]
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "OutcomeTable",
    "TableError",
    "load_dataset",
    "load_table",
    "resolve_tables",
    "split_by_query",
]

#: Shipped datasets: name -> (file inside ``dynroute/llm/datasets``, what it is).
DATASETS: dict[str, tuple[str, str]] = {
    "llmrouter": (
        "llmrouter.jsonl.gz",
        "LLMRouter: 5,989 queries x 9 open models, 14 tasks, its own train/test split",
    ),
    "routellm-mmlu": (
        "routellm_mmlu.jsonl.gz",
        "RouteLLM MMLU: 14,037 questions, Mixtral-8x7B vs GPT-4 correctness",
    ),
    "routellm-gsm8k": (
        "routellm_gsm8k.jsonl.gz",
        "RouteLLM GSM8K: 1,307 problems, Mixtral-8x7B vs GPT-4 correctness",
    ),
}


class TableError(ValueError):
    """A malformed outcome table; the message names the file and what to do."""


@dataclass(frozen=True, eq=False)
class OutcomeTable:
    """Per-query outcomes of ``M`` models on ``Q`` queries.

    Attributes:
        queries: ``Q`` query texts.
        models: ``M`` model names (unique).
        quality: ``[Q, M]`` float64, higher is better (correctness 0/1 or a score).
        cost: ``[Q, M]`` float64, cost of calling the model on the query (USD).
        split: ``Q`` labels (``"train"``/``"test"``/``""``) when the source fixes a split.
        source: where the table came from, used in error messages.
    """

    queries: tuple[str, ...]
    models: tuple[str, ...]
    quality: np.ndarray
    cost: np.ndarray
    split: tuple[str, ...] = ()
    source: str = "<memory>"
    _: None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        q, m = len(self.queries), len(self.models)
        where = self.source
        if m < 1 or len(set(self.models)) != m:
            raise TableError(f"{where}: model names must be unique and non-empty: {self.models}")
        for name, arr in (("quality", self.quality), ("cost", self.cost)):
            if arr.shape != (q, m):
                raise TableError(f"{where}: {name} has shape {arr.shape}, expected {(q, m)}")
            bad = np.argwhere(~np.isfinite(arr))
            if len(bad):
                i, j = bad[0]
                raise TableError(
                    f"{where}: {len(bad)} missing or NaN {name} value(s), first for model "
                    f"{self.models[j]!r} on query {i}; fill or drop those rows"
                )
        if (self.cost < 0).any():
            raise TableError(f"{where}: negative costs; costs must be >= 0")
        if self.split and len(self.split) != q:
            raise TableError(f"{where}: split has {len(self.split)} labels for {q} queries")

    @classmethod
    def from_rows(
        cls,
        queries: Sequence[str],
        models: Sequence[str],
        quality: Any,
        cost: Any,
        split: Sequence[str] = (),
        source: str = "<memory>",
    ) -> OutcomeTable:
        """Build a table from nested lists or arrays (``quality``/``cost``: ``[Q, M]``)."""
        return cls(
            tuple(queries),
            tuple(models),
            np.asarray(quality, dtype=np.float64).reshape(len(queries), len(models)),
            np.asarray(cost, dtype=np.float64).reshape(len(queries), len(models)),
            tuple(split),
            source,
        )

    @property
    def num_queries(self) -> int:
        return len(self.queries)

    @property
    def num_models(self) -> int:
        return len(self.models)

    def subset(self, rows: Sequence[int] | np.ndarray) -> OutcomeTable:
        """The table restricted to ``rows`` (query indices)."""
        idx = np.asarray(rows, dtype=np.int64)
        split = tuple(self.split[i] for i in idx) if self.split else ()
        queries = tuple(self.queries[i] for i in idx)
        return replace(
            self, queries=queries, quality=self.quality[idx], cost=self.cost[idx], split=split
        )

    def select_models(self, names: Sequence[str]) -> OutcomeTable:
        """The table restricted to (and ordered as) ``names``; unknown names raise."""
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise TableError(
                f"{self.source}: unknown model name(s) {unknown}; the table has {list(self.models)}"
            )
        cols = [self.models.index(n) for n in names]
        return replace(
            self, models=tuple(names), quality=self.quality[:, cols], cost=self.cost[:, cols]
        )

    def aligned_to(self, models: Sequence[str]) -> OutcomeTable:
        """The table with its model columns in the order of ``models``, which must be the
        same pool (a fitted router's, a training table's): routers index models by position.

        Raises:
            TableError: naming the table, the models it has that ``models`` lacks and those
                it misses.

        Example:
            >>> t = OutcomeTable.from_rows(["q"], ["a", "b"], [[0, 1]], [[1, 2]])
            >>> t.aligned_to(["b", "a"]).quality.tolist()
            [[1.0, 0.0]]
            >>> try:
            ...     t.aligned_to(["a", "c"])
            ... except TableError as err:
            ...     print(str(err).split("; ")[0])
            <memory>: model pool differs from the router's: unknown ['b'], missing ['c']
        """
        if tuple(self.models) == tuple(models):
            return self
        unknown = [m for m in self.models if m not in models]
        missing = [m for m in models if m not in self.models]
        if unknown or missing:
            raise TableError(
                f"{self.source}: model pool differs from the router's: unknown {unknown}, "
                f"missing {missing}; evaluate on a table with models {list(models)}"
            )
        return self.select_models(models)

    def single_model_points(self) -> list[tuple[str, float, float]]:
        """``(model, mean cost, mean quality)`` of always calling each model."""
        return [
            (m, float(self.cost[:, j].mean()), float(self.quality[:, j].mean()))
            for j, m in enumerate(self.models)
        ]


def split_by_query(
    table: OutcomeTable, test_size: float = 0.2, seed: int = 0
) -> tuple[OutcomeTable, OutcomeTable]:
    """Split rows into train/test so that no query text lands on both sides.

    Rows with the same (whitespace-stripped) text form one group; groups are shuffled
    with ``seed`` and the first ``test_size`` share of rows goes to test.

    Example:
        >>> t = OutcomeTable.from_rows(list("abcab"), ["m"], [[1]] * 5, [[1]] * 5)
        >>> tr, te = split_by_query(t, test_size=0.4, seed=0)
        >>> sorted(set(tr.queries) & set(te.queries))
        []
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(table.queries):
        groups.setdefault(q.strip(), []).append(i)
    keys = list(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    want = round(test_size * table.num_queries)
    test: list[int] = []
    for k in order:
        if len(test) >= want:
            break
        test.extend(groups[keys[k]])
    in_test = set(test)
    train = [i for i in range(table.num_queries) if i not in in_test]
    return table.subset(train), table.subset(sorted(test))


# --------------------------------------------------------------------------- loaders


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _float(value: Any, where: str, what: str) -> float:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "false"):
            return 1.0 if low == "true" else 0.0
        if low in ("", "nan", "none", "null"):
            return math.nan
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TableError(f"{where}: {what} {value!r} is not a number") from None


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL (or JSON list) or CSV file as dicts (``.gz`` allowed)."""
    name = path.name.removesuffix(".gz")
    with _open_text(path) as f:
        if name.endswith((".jsonl", ".json")):
            text = f.read()
            if text.lstrip().startswith("["):
                try:
                    yield from json.loads(text)
                except json.JSONDecodeError as err:
                    raise TableError(f"{path}: not valid JSON ({err})") from None
                return
            for n, line in enumerate(text.split("\n"), 1):  # not splitlines: \u2028 in text
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise TableError(f"{path}: line {n} is not valid JSON ({err})") from None
        elif name.endswith(".csv"):
            csv.field_size_limit(sys.maxsize)
            yield from csv.DictReader(f)
        else:
            raise TableError(f"{path}: unknown table format; use .jsonl, .json, .csv or .pkl")


def _from_long(path: Path, rows: list[dict[str, Any]]) -> OutcomeTable:
    """``query, model, quality, cost`` rows -> table (every query needs every model)."""
    need = ("query", "model", "quality", "cost")
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise TableError(
            f"{path}: missing column(s) {missing}; a long table needs {list(need)} "
            f"(found {list(rows[0])})"
        )
    queries: dict[str, int] = {}
    models: dict[str, int] = {}
    cells: dict[tuple[int, int], tuple[float, float]] = {}
    gaps: set[tuple[int, int]] = set()  # cells a row marks missing (`dynroute llm collect`)
    for n, r in enumerate(rows, 1):
        qi = queries.setdefault(str(r["query"]), len(queries))
        mi = models.setdefault(str(r["model"]), len(models))
        where = f"{path} row {n}"
        if r.get("missing"):  # the backend gave no answer: no outcome, not a quality of 0
            gaps.add((qi, mi))
            continue
        qual = _float(r["quality"], where, "quality")
        cost = _float(r["cost"], where, "cost")
        if math.isnan(qual) or math.isnan(cost):
            raise TableError(f"{where}: NaN or empty quality/cost; fill or drop the row")
        cells[(qi, mi)] = (qual, cost)
    quality = np.full((len(queries), len(models)), np.nan)
    cost = np.full_like(quality, np.nan)
    for (qi, mi), (a, b) in cells.items():
        quality[qi, mi], cost[qi, mi] = a, b
    unfilled = gaps - set(cells)  # a later row (a rerun that got an answer) fills a gap
    if unfilled:
        return _drop_missing(path, tuple(queries), tuple(models), quality, cost, unfilled)
    return OutcomeTable(tuple(queries), tuple(models), quality, cost, (), str(path))


def _drop_missing(
    path: Path,
    queries: tuple[str, ...],
    models: tuple[str, ...],
    quality: np.ndarray,
    cost: np.ndarray,
    gaps: set[tuple[int, int]],
) -> OutcomeTable:
    """The table without the queries some model has a ``missing`` row for (a router learns
    from complete rows only); a warning says how many were dropped, and for which models."""
    drop = sorted({qi for qi, _ in gaps})
    keep = [i for i in range(len(queries)) if i not in set(drop)]
    by_model = dict(sorted(Counter(models[mi] for _, mi in gaps).items()))
    if not keep:
        raise TableError(
            f"{path}: every query has a missing outcome (missing rows per model: {by_model}); "
            "rerun `dynroute llm collect` once those backends answer, or drop those models"
        )
    warnings.warn(
        f"{path}: {len(drop)} of {len(queries)} queries dropped, a model's outcome missing "
        f"(rows per model: {by_model}); rerun `dynroute llm collect` to fill them",
        stacklevel=4,
    )
    return OutcomeTable(
        tuple(queries[i] for i in keep), models, quality[keep], cost[keep], (), str(path)
    )


def _from_wide(path: Path, rows: list[dict[str, Any]]) -> OutcomeTable:
    """Our wide JSONL: ``{"query", "quality": {m: q}, "cost": {m: c}, "split"?}``."""
    first = rows[0]
    if "cost" not in first:
        raise TableError(f"{path}: missing 'cost' field; add a {{model: cost}} map per row")
    models = tuple(first["quality"])
    quality = np.empty((len(rows), len(models)))
    cost = np.empty_like(quality)
    for n, r in enumerate(rows):
        where = f"{path} line {n + 1}"
        if set(r.get("quality", {})) != set(models) or set(r.get("cost", {})) != set(models):
            raise TableError(
                f"{where}: model names differ from the first line's {list(models)}; "
                "every line needs the same models"
            )
        quality[n] = [_float(r["quality"][m], where, "quality") for m in models]
        cost[n] = [_float(r["cost"][m], where, "cost") for m in models]
    split = tuple(str(r.get("split", "")) for r in rows) if "split" in first else ()
    return OutcomeTable(
        tuple(str(r["query"]) for r in rows), models, quality, cost, split, str(path)
    )


def _from_routerbench(path: Path, rows: list[dict[str, Any]]) -> OutcomeTable:
    """RouterBench wide rows: ``prompt``, one quality column per model, ``<m>|total_cost``."""
    columns = list(rows[0])
    models = tuple(c for c in columns if f"{c}|total_cost" in columns)
    if not models:
        raise TableError(
            f"{path}: no '<model>|total_cost' column next to a model column; RouterBench "
            "tables need one quality column and one cost column per model"
        )

    def column(what: str, suffix: str) -> np.ndarray:
        return np.array(
            [
                [_float(r[m + suffix], f"{path} row {n}", what) for m in models]
                for n, r in enumerate(rows, 1)
            ]
        )

    quality, cost = column("quality", ""), column("cost", "|total_cost")
    return OutcomeTable(tuple(str(r["prompt"]) for r in rows), models, quality, cost, (), str(path))


def _pickle_rows(path: Path) -> list[dict[str, Any]]:
    try:
        import pandas as pd
    except ImportError:
        raise TableError(
            f"{path}: reading a RouterBench pickle needs pandas (pip install pandas), "
            "or save the table as CSV"
        ) from None
    # RouterBench ships a pandas DataFrame pickle; unpickling runs code, so only load
    # files you trust. Our own files never use pickle.
    frame = pd.read_pickle(path)
    return [{str(k): v for k, v in r.items()} for r in frame.to_dict("records")]


def load_table(path: str | Path) -> OutcomeTable:
    """Read an outcome table, recognising its layout from its columns.

    Layouts: long (``query, model, quality, cost``), RouterBench wide (``prompt`` plus
    ``<model>`` and ``<model>|total_cost`` columns; CSV or ``.pkl``), or our wide JSONL.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(
            f"{path}: no such file; pass an outcome table or a dataset name ({', '.join(DATASETS)})"
        )
    rows = _pickle_rows(path) if path.suffix in (".pkl", ".pickle") else list(_records(path))
    if not rows:
        raise TableError(f"{path}: the table is empty")
    if not isinstance(rows[0], dict):
        raise TableError(f"{path}: rows must be JSON objects")
    cols = set(rows[0])
    if "prompt" in cols and any(c.endswith("|total_cost") for c in cols):
        return _from_routerbench(path, rows)
    if isinstance(rows[0].get("quality"), dict):
        return _from_wide(path, rows)
    if "prompt" in cols:  # RouterBench-like but without costs
        raise TableError(
            f"{path}: missing cost columns; RouterBench tables need '<model>|total_cost' "
            "for every model"
        )
    return _from_long(path, rows)


def load_dataset(
    name: str, test_size: float = 0.2, seed: int = 0
) -> tuple[OutcomeTable, OutcomeTable]:
    """A shipped dataset as ``(train, test)``.

    ``llmrouter`` keeps its published split (minus test prompts that also occur in its
    train file); the RouteLLM tables are split by query with ``seed``.

    Example:
        >>> train, test = load_dataset("routellm-gsm8k")
        >>> train.models
        ('mixtral-8x7b-instruct', 'gpt-4-1106-preview')
        >>> len(set(train.queries) & set(test.queries))
        0
    """
    if name not in DATASETS:
        raise TableError(f"unknown dataset {name!r}; shipped: {', '.join(DATASETS)}")
    ref = resources.files("dynroute.llm") / "datasets" / DATASETS[name][0]
    with resources.as_file(ref) as path:
        table = load_table(path)
    table = replace(table, source=f"dataset {name}")
    if table.split:
        train = [i for i, s in enumerate(table.split) if s == "train"]
        test = [i for i, s in enumerate(table.split) if s == "test"]
        return table.subset(train), table.subset(test)
    return split_by_query(table, test_size, seed)


def resolve_tables(
    data: str | None,
    train: str | Path | None,
    test: str | Path | None,
    *,
    test_size: float = 0.2,
    seed: int = 0,
) -> tuple[OutcomeTable, OutcomeTable | None]:
    """``(train, test)`` from a dataset name, or from files.

    A dataset name gives its own split; with files, ``test`` may be None (the caller
    decides whether to split ``train``), and a test table must use the training pool.
    """
    if data is not None:
        return load_dataset(data, test_size, seed)
    if train is None:
        raise TableError(f"pass --data NAME ({', '.join(DATASETS)}) or --train FILE")
    if isinstance(train, str) and train in DATASETS:
        return load_dataset(train, test_size, seed)
    tr = load_table(train)
    te = load_table(test) if test is not None else None
    if te is not None:
        unknown = [m for m in te.models if m not in tr.models]
        if unknown:
            raise TableError(
                f"{te.source}: unknown model name(s) {unknown} not in the training table "
                f"{tr.source} ({list(tr.models)}); use the same model pool in both"
            )
        te = te.select_models(tr.models)
    return tr, te


def write_wide_jsonl(table: OutcomeTable, path: str | Path, ndigits: int = 9) -> None:
    """Write ``table`` as our wide JSONL (gzipped when ``path`` ends in ``.gz``)."""
    path = Path(path)
    lines: Iterable[str] = (
        json.dumps(
            {
                "query": q,
                "quality": {m: round(float(v), 4) for m, v in zip(table.models, qual, strict=True)},
                "cost": {m: round(float(v), ndigits) for m, v in zip(table.models, c, strict=True)},
                **({"split": table.split[i]} if table.split else {}),
            },
            ensure_ascii=False,
        )
        for i, (q, qual, c) in enumerate(zip(table.queries, table.quality, table.cost, strict=True))
    )
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if path.suffix == ".gz":
        # mtime=0 keeps the file byte-identical across rebuilds.
        with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
            f.write(data)
    else:
        path.write_bytes(data)
