"""The headline numbers of one or more runs, as rows for the terminal and the report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.table import Table

__all__ = ["headline_cache_size", "summary_rows", "summary_table"]


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def headline_cache_size(runs: list[dict[str, Any]]) -> int | None:
    """One cache size C to compare runs at: the nearest to twice the mean active experts.

    "Not All Models Suit Expert Offloading" finds a cache of about 2x the active experts
    is where most models balance hit rate and memory. A cache of all E experts is
    trivially perfect, so C < E when possible; the largest k̄ of the runs sets the target.

    Example:
        >>> headline_cache_size([{"experts_per_token": 1.6, "meta": {"cache_sizes": [1, 2, 4, 8],
        ...                       "num_experts": [8]}}])
        4
    """
    sizes = set.intersection(*(set(s["meta"].get("cache_sizes") or []) for s in runs))
    ks = [s.get("experts_per_token") for s in runs]
    if not sizes or any(k is None for k in ks):
        return None
    e = min(min(s["meta"]["num_experts"]) for s in runs)
    pool = sorted(c for c in sizes if c < e) or sorted(sizes)
    target = 2 * max(k for k in ks if k is not None)
    return min(pool, key=lambda c: (abs(c - target), c))


def summary_rows(runs: Mapping[str, dict[str, Any]]) -> list[list[str]]:
    """Rows ``[metric, value per run...]`` of the headline statistics.

    Example:
        >>> s = {"meta": {"num_tokens": 64, "cache_sizes": [1, 2], "capacity_factor": None,
        ...               "num_experts": [4]},
        ...      "mean_loss": 2.0, "experts_per_token": 1.0, "experts_per_layer": [1.0],
        ...      "difficulty_spearman": 0.1, "entropy_spearman": 0.2, "load_cv": [0.5],
        ...      "load_max_over_mean": [1.5], "token_id_consistency": [0.9],
        ...      "token_id_baseline": [0.5], "cache_hit_rate": {"4": {"2": 0.8}},
        ...      "srp": {"4": 0.7}, "drop_rate": [0.0]}
        >>> summary_rows({"a": s})[2]
        ['experts / token', '1.000']
    """
    stats = list(runs.values())

    def row(name: str, fn: Any) -> list[str]:
        return [name, *(fn(s) for s in stats)]

    rows = [
        row("tokens analysed", lambda s: f"{s['meta']['num_tokens']:,}"),
        row("mean token loss (nats)", lambda s: _f(s.get("mean_loss"))),
        row("experts / token", lambda s: _f(s["experts_per_token"])),
        row(
            "experts / token, first → last layer",
            lambda s: f"{_f(s['experts_per_layer'][0], 2)} → {_f(s['experts_per_layer'][-1], 2)}",
        ),
        row("Spearman(experts, token loss)", lambda s: _f(s["difficulty_spearman"])),
        row("Spearman(experts, router entropy)", lambda s: _f(s.get("entropy_spearman"))),
        row("load CV (mean over layers)", lambda s: _f(_mean(s["load_cv"]))),
        row("load max/mean (worst layer)", lambda s: _f(max(_v(s["load_max_over_mean"])), 2)),
        row(
            "token-id consistency (shuffled ids)",
            lambda s: (
                f"{_f(_mean(s['token_id_consistency']))} ({_f(_mean(s['token_id_baseline']))})"
            ),
        ),
    ]
    segments = sorted({seg for s in stats for seg in s["cache_hit_rate"]}, key=int)
    c = headline_cache_size(stats)
    for seg in segments:
        rows.append(
            row(
                f"cache hit rate, S={seg}, C={c}",
                lambda s, seg=seg: _f(s["cache_hit_rate"].get(seg, {}).get(str(c))),
            )
        )
    for seg in segments:
        rows.append(row(f"SRP (best F1), S={seg}", lambda s, seg=seg: _f(s["srp"].get(seg))))
    rows.append(
        row(
            "capacity drop rate",
            lambda s: (
                f"{_f(_mean(s['drop_rate']))} (cf={s['meta']['capacity_factor']})"
                if s["meta"].get("capacity_factor")
                else "–"
            ),
        )
    )
    return rows


def _v(xs: list[float | None]) -> list[float]:
    vals = [x for x in xs if x is not None]
    return vals or [math.nan]


def summary_table(runs: Mapping[str, dict[str, Any]], title: str = "Routing analysis") -> Table:
    """A ``rich`` table of :func:`summary_rows` (one column per run).

    Example:
        >>> import torch
        >>> from dynroute.analysis import RoutingRecorder, summarize
        >>> from dynroute.routing import top_k
        >>> rec = RoutingRecorder()
        >>> rec.begin_batch(torch.arange(16).view(2, 8))
        >>> rec.record(0, top_k(torch.randn(16, 4), k=2))
        >>> rec.end_batch(torch.rand(2, 8))
        >>> summary_table({"top2": summarize(rec)}).columns[1].header
        'top2'
    """
    table = Table(title=title)
    table.add_column("statistic")
    for label in runs:
        table.add_column(label, justify="right")
    for r in summary_rows(runs):
        table.add_row(*r)
    return table
