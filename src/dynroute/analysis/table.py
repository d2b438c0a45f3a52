"""The headline numbers of one or more runs, as rows for the terminal and the report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.table import Table

from dynroute.common.numbers import MISSING, format_number

__all__ = [
    "findings",
    "headline_cache_size",
    "layer_pattern",
    "strength",
    "summary_rows",
    "summary_table",
]


def _f(x: float | None, digits: int = 3) -> str:
    return format_number(None if x is None or not math.isfinite(x) else x, f".{digits}f")


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def layer_pattern(per_layer: list[float | None], layers: list[int] | None = None) -> str:
    """Where a run spends its experts across layers, in words computed from the numbers.

    Compares the mean of the lower half of the layers with the upper half (the middle
    layer of an odd count is in neither); differences under 0.01 experts are "equal",
    since the values are shown with two decimals.

    Args:
        per_layer: mean experts per token of each MoE layer, bottom first (None: no data).
        layers: the layer numbers to name (default 0, 1, ...).

    Example:
        >>> layer_pattern([1.2, 1.5, 2.73], [0, 1, 2])
        'most in layer 2 (2.73), fewest in layer 0 (1.20); upper layers use more (2.73 vs 1.20)'
        >>> layer_pattern([1.52, 1.521])
        'every layer uses 1.52 experts per token'
    """
    pairs = [(i, x) for i, x in zip(layers or range(len(per_layer)), per_layer, strict=False)]
    pairs = [(i, x) for i, x in pairs if x is not None]
    if not pairs:
        return "no per-layer data"
    values = [x for _, x in pairs]
    if max(values) - min(values) < 0.005:
        return f"every layer uses {values[0]:.2f} experts per token"
    hi, lo = max(pairs, key=lambda p: p[1]), min(pairs, key=lambda p: p[1])
    text = f"most in layer {hi[0]} ({hi[1]:.2f}), fewest in layer {lo[0]} ({lo[1]:.2f})"
    half = len(values) // 2
    lower, upper = _mean(values[:half]), _mean(values[len(values) - half :])
    if lower is None or upper is None:
        return text
    if abs(upper - lower) < 0.005:
        return f"{text}; lower and upper layers use the same on average ({lower:.2f})"
    side = "lower" if lower > upper else "upper"
    big, small = max(lower, upper), min(lower, upper)
    return f"{text}; {side} layers use more ({big:.2f} vs {small:.2f})"


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
                else MISSING
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


def strength(rho: float) -> str:
    """Words for the size of a correlation (|rho| < 0.1 none, < 0.3 weak, < 0.5 moderate).

    Example:
        >>> strength(0.05), strength(-0.4), strength(0.8)
        ('no meaningful', 'moderate', 'strong')
    """
    r = abs(rho)
    return (
        "no meaningful" if r < 0.1 else "weak" if r < 0.3 else "moderate" if r < 0.5 else "strong"
    )


def _quarter_means(xs: list[float | None]) -> tuple[float | None, float | None]:
    n = len(xs)
    q = max(n // 4, 1)
    return _mean(xs[:q]), _mean(xs[n - q :])


def findings(stats: dict[str, Any]) -> list[str]:
    """Plain-language sentences on what one run's statistics say about each claim.

    Example:
        >>> s = {"experts_per_layer": [1.5, 1.0], "meta": {"layer_indices": [0, 1],
        ...      "cache_sizes": [1, 2], "num_experts": [4], "capacity_factor": None},
        ...      "experts_per_token": 1.25, "difficulty_spearman": 0.2,
        ...      "token_id_consistency": [0.9], "token_id_baseline": [0.5],
        ...      "cache_hit_rate": {"8": {"2": 0.75}}, "position_drop_rate": []}
        >>> lines = findings(s)
        >>> print(lines[0])  # doctest: +NORMALIZE_WHITESPACE
        Experts per token by layer: most in layer 0 (1.50), fewest in layer 1 (1.00);
        lower layers use more (1.50 vs 1.00).
        >>> lines[1].startswith("Harder tokens get more experts, a weak effect: Spearman 0.200")
        True
        >>> lines[2].endswith("routing is largely decided by the token id.")
        True
    """
    out = []
    per_layer = [x for x in stats["experts_per_layer"] if x is not None]
    idx = stats["meta"].get("layer_indices") or list(range(len(per_layer)))
    if per_layer:
        pattern = layer_pattern(per_layer, idx)
        out.append(f"Experts per token by layer: {pattern}.")
    rho = stats.get("difficulty_spearman")
    if rho is None:
        out.append("Every token runs the same number of experts, so difficulty cannot matter.")
    else:
        effect = strength(rho)
        if effect == "no meaningful":
            out.append(
                f"No meaningful link between a token's loss and the experts it runs "
                f"(Spearman {format_number(rho, '.3f')})."
            )
        else:
            direction = "more" if rho >= 0 else "fewer"
            out.append(
                f"Harder tokens get {direction} experts, a {effect} effect: Spearman "
                f"{format_number(rho, '.3f')} between a token's loss and the experts it runs."
            )
    c, b = _mean(stats["token_id_consistency"]), _mean(stats["token_id_baseline"])
    if c is not None and b is not None:
        out.append(
            f"{c:.0%} of a frequent token's occurrences go to its most common expert "
            f"({b:.0%} with token ids shuffled): routing is "
            + ("largely decided by the token id." if c - b > 0.1 else "not just the token id.")
        )
    size = headline_cache_size([stats])
    if stats["cache_hit_rate"] and size is not None:
        seg = max(stats["cache_hit_rate"], key=int)
        hit = stats["cache_hit_rate"][seg].get(str(size))
        if hit is not None:
            out.append(
                f"A cache of {size} experts per layer that knows the next {seg} tokens serves "
                f"{hit:.0%} of expert uses (the offloading upper bound)."
            )
    cf = stats["meta"].get("capacity_factor")
    first, last = _quarter_means(stats.get("position_drop_rate") or [])
    if cf and first is not None and last is not None:
        out.append(
            f"Under capacity factor {cf}, {first:.1%} of assignments are dropped in the first "
            f"quarter of a sequence and {last:.1%} in the last."
        )
    return out
