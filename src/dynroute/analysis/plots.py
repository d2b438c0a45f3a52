"""Figures of ``stats.json`` (matplotlib, no pyplot state: each function returns a Figure).

Every function takes ``runs``: a mapping label -> stats dict, so one run and a
side-by-side comparison share the same code. Save with :func:`save_figure`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from dynroute.common.files import atomic_write_bytes
from dynroute.common.numbers import format_number

__all__ = [
    "FIGURES",
    "plot_cache",
    "plot_difficulty",
    "plot_experts_hist",
    "plot_experts_per_layer",
    "plot_load",
    "plot_position",
    "plot_token_id",
    "save_figure",
]

Runs = Mapping[str, dict[str, Any]]


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (the format from its suffix, its folder created),
    close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or None, dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    plt.close(fig)
    return path


STYLES = ("-", "--", ":", "-.")


def _arr(xs: list[float | None]) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in xs], dtype=np.float64)


def _integer_ticks(*axes: Any) -> None:
    """Ticks only at whole numbers on these axes (layers, experts, expert counts): a
    heatmap's cells or a bar per layer have no position 0.5."""
    for axis in axes:
        axis.set_major_locator(MaxNLocator(integer=True))


def _layer_ticks(ax: Any, s: dict[str, Any], axis: str = "x") -> None:
    """Label layer positions 0..L-1 with the model's real layer numbers (whole-number
    ticks when the stats do not name them)."""
    idx = s.get("meta", {}).get("layer_indices")
    if not idx:
        _integer_ticks(ax.xaxis if axis == "x" else ax.yaxis)
        return
    step = max(1, len(idx) // 16)
    pos = list(range(0, len(idx), step))
    labels = [str(idx[i]) for i in pos]
    if axis == "x":
        ax.set_xticks(pos, labels)
    else:
        ax.set_yticks(pos, labels)


def _layer_heatmap(
    fig: Figure,
    ax: Any,
    s: dict[str, Any],
    grid: np.ndarray,
    scale: tuple[str, float, float],
    xlabel: str,
    title: str,
    bar_label: str,
) -> None:
    """A [layers, x] heatmap (x: experts or expert counts) with whole-number ticks on both
    axes and a colour bar; scale = (cmap, lo, hi)."""
    cmap, lo, hi = scale
    im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=lo, vmax=hi, origin="lower")
    ax.set(xlabel=xlabel, ylabel="layer", title=title)
    _integer_ticks(ax.xaxis, ax.yaxis)
    _layer_ticks(ax, s, "y")
    fig.colorbar(im, ax=ax, label=bar_label)


def _fig(ncols: int = 1, nrows: int = 1, w: float = 6.0, h: float = 3.6) -> Figure:
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    fig.subplots(nrows, ncols, squeeze=False)
    return fig


def _bar_x(n: int, i: int, runs: Runs) -> tuple[np.ndarray, float]:
    """x positions of run ``i``'s ``n`` bars side by side with the other runs', and the width."""
    width = 0.8 / len(runs)
    return np.arange(n) + i * width - 0.4 + width / 2, width


def _label(label: str, curve: dict[str, Any]) -> str:
    rho = curve.get("spearman")
    return f"{label} (Spearman {format_number(rho, '.3f')})" if rho is not None else label


def plot_experts_hist(runs: Runs) -> Figure:
    """Share of (token, layer) pairs by number of experts run, overall and per layer.

    Example:
        >>> plot_experts_hist({"a": {"experts_hist": [0, 3, 1],
        ...     "layers": [{"experts_hist": [0, 3, 1]}]}}).axes[0].get_xlabel()
        'experts per token'
    """
    fig = _fig(1 + len(runs), w=5.0)
    ax = fig.axes[0]
    for i, (label, s) in enumerate(runs.items()):
        h = np.asarray(s["experts_hist"], dtype=np.float64)
        x, width = _bar_x(h.size, i, runs)
        ax.bar(x, h / max(h.sum(), 1), width, label=label)
    ax.set(xlabel="experts per token", ylabel="share of tokens", title="all layers")
    _integer_ticks(ax.xaxis)
    ax.legend()
    for ax, (label, s) in zip(fig.axes[1:], runs.items(), strict=True):
        rows = [np.asarray(lay["experts_hist"], dtype=np.float64) for lay in s["layers"]]
        width_k = max(r.size for r in rows)
        grid = np.zeros((len(rows), width_k))
        for j, r in enumerate(rows):
            grid[j, : r.size] = r / max(r.sum(), 1)
        _layer_heatmap(
            fig, ax, s, grid, ("viridis", 0, 1), "experts per token", f"{label}: per layer",
            "share of tokens",
        )  # fmt: skip
    return fig


def plot_experts_per_layer(runs: Runs) -> Figure:
    """Mean experts per token in each layer ("lower layers need more experts").

    Example:
        >>> plot_experts_per_layer({"a": {"experts_per_layer": [2.0, 1.5]}}).axes[0].get_ylabel()
        'mean experts / token'
    """
    fig = _fig()
    ax = fig.axes[0]
    for i, (label, s) in enumerate(runs.items()):
        y = _arr(s["experts_per_layer"])
        x, width = _bar_x(y.size, i, runs)
        ax.bar(x, y, width, label=label)
    ax.set(xlabel="layer", ylabel="mean experts / token", title="experts per token by layer")
    _layer_ticks(ax, next(iter(runs.values())))
    ax.legend()
    return fig


def plot_difficulty(runs: Runs) -> Figure:
    """Mean experts per token vs token loss and vs router entropy (quantile bins).

    Example:
        >>> d = {"bin_upper": [1.0, 2.0], "mean_experts": [1.2, 1.8], "spearman": 0.3}
        >>> s = {"difficulty": d, "entropy": d, "meta": {"num_layers": 1}}
        >>> len(plot_difficulty({"a": s}).axes)
        2
    """
    fig = _fig(2)
    left, right = fig.axes
    for i, (label, s) in enumerate(runs.items()):
        style = STYLES[i % len(STYLES)]
        d, e, layers = s["difficulty"], s["entropy"], max(s["meta"]["num_layers"], 1)
        y = _arr(d["mean_experts"]) / layers
        left.plot(d["bin_upper"], y, style, marker="o", label=_label(label, d))
        right.plot(e["bin_upper"], e["mean_experts"], style, marker="o", label=_label(label, e))
    left.set(
        xlabel="token loss (nats, upper edge of decile)",
        ylabel="mean experts / token / layer",
        title="harder tokens, more experts?",
    )
    right.set(
        xlabel="router entropy / log(#experts) (upper edge of decile)",
        ylabel="mean experts / token",
        title="uncertain router, more experts?",
    )
    left.legend()
    right.legend()
    return fig


def plot_load(runs: Runs) -> Figure:
    """Share of tokens per expert per layer (1/E = perfectly balanced), one panel per run.

    Example:
        >>> s = {"layers": [{"expert_tokens": [3, 1], "load_cv": 0.5}]}
        >>> plot_load({"a": s}).axes[0].get_ylabel()
        'layer'
    """
    fig = _fig(len(runs), w=5.5)
    for ax, (label, s) in zip(fig.axes[: len(runs)], runs.items(), strict=True):
        rows = [np.asarray(lay["expert_tokens"], dtype=np.float64) for lay in s["layers"]]
        e = max(r.size for r in rows)
        grid = np.full((len(rows), e), np.nan)
        for j, r in enumerate(rows):
            grid[j, : r.size] = r / max(r.sum(), 1) * r.size  # 1.0 = balanced
        cv = _arr([lay["load_cv"] for lay in s["layers"]])
        _layer_heatmap(
            fig, ax, s, grid, ("coolwarm", 0, 2), "expert",
            f"{label}: load (mean CV {np.nanmean(cv):.2f})", "tokens / balanced share",
        )  # fmt: skip
    return fig


def plot_token_id(runs: Runs) -> Figure:
    """Token-id consistency per layer vs the same statistic with token ids shuffled.

    Example:
        >>> s = {"token_id_consistency": [0.9], "token_id_baseline": [0.4]}
        >>> [float(v) for v in plot_token_id({"a": s}).axes[0].get_ylim()]
        [0.0, 1.05]
    """
    fig = _fig()
    ax = fig.axes[0]
    for i, (label, s) in enumerate(runs.items()):
        y, b = _arr(s["token_id_consistency"]), _arr(s["token_id_baseline"])
        x, width = _bar_x(y.size, i, runs)
        ax.bar(x, y, width, label=label)
        ax.scatter(x, b, marker="_", s=200, color="black", zorder=3)
    ax.scatter([], [], marker="_", s=200, color="black", label="token ids shuffled")
    ax.set(
        xlabel="layer",
        ylabel="share to the token's top expert",
        title="routing decided by token id? (OpenMoE)",
        ylim=(0, 1.05),
    )
    _layer_ticks(ax, next(iter(runs.values())))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return fig


def plot_cache(runs: Runs) -> Figure:
    """Best expert-cache hit rate (SCH) vs cache size, one line per segment length.

    Example:
        >>> s = {"cache_hit_rate": {"4": {"1": 0.5, "2": 0.8}}}
        >>> plot_cache({"a": s}).axes[0].get_xlabel()
        'cache size C (experts)'
    """
    fig = _fig()
    ax = fig.axes[0]
    colors = ["C0", "C1", "C2", "C3", "C4", "C5"]
    for i, (label, s) in enumerate(runs.items()):
        for j, (seg, by_c) in enumerate(s["cache_hit_rate"].items()):
            cs = sorted(by_c, key=int)
            ax.plot(
                [int(c) for c in cs],
                _arr([by_c[c] for c in cs]),
                STYLES[i % len(STYLES)],
                marker="o",
                color=colors[j % len(colors)],
                label=f"{label}, S={seg}",
            )
    ax.set(
        xlabel="cache size C (experts)",
        ylabel="best hit rate",
        title="local routing consistency (offloading)",
        ylim=(0, 1.05),
    )
    if not any(s["cache_hit_rate"] for s in runs.values()):
        ax.text(0.5, 0.5, "no segment length fits the sequences", ha="center", va="center")
        return fig
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return fig


def _bucket(y: np.ndarray, max_points: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Average a long per-position curve into at most ``max_points`` buckets."""
    n = y.size
    size = max(1, -(-n // max_points))
    edges = np.arange(0, n, size)
    means = np.array(
        [
            np.nanmean(y[e : e + size]) if np.isfinite(y[e : e + size]).any() else np.nan
            for e in edges
        ]
    )
    return edges + (np.minimum(edges + size, n) - 1 - edges) / 2, means


def plot_position(runs: Runs) -> Figure:
    """Mean experts per token and capacity drop rate by position in the sequence.

    Example:
        >>> s = {"position_mean_experts": [2.0, 1.5], "position_drop_rate": [0.0, 0.1],
        ...      "meta": {"capacity_factor": 1.25}}
        >>> len(plot_position({"a": s}).axes)
        2
    """
    fig = _fig(2)
    left, right = fig.axes
    for i, (label, s) in enumerate(runs.items()):
        style = STYLES[i % len(STYLES)]
        x, y = _bucket(_arr(s["position_mean_experts"]))
        left.plot(x, y, style, label=label)
        x, y = _bucket(_arr(s["position_drop_rate"]))
        right.plot(x, y, style, label=label)
    left.set(
        xlabel="position in sequence", ylabel="mean experts / token", title="experts by position"
    )
    cf = next(iter(runs.values()))["meta"].get("capacity_factor")
    right.set(
        xlabel="position in sequence",
        ylabel="share of assignments dropped",
        title=f"drops under capacity factor {cf}" if cf else "drops (no capacity factor set)",
    )
    left.legend()
    right.legend()
    return fig


FIGURES: dict[str, tuple[str, Callable[[Runs], Figure]]] = {
    "experts_hist": ("Experts per token", plot_experts_hist),
    "experts_per_layer": ("Experts per token by layer", plot_experts_per_layer),
    "difficulty": ("Difficulty vs experts", plot_difficulty),
    "load": ("Load per expert", plot_load),
    "token_id": ("Specialization by token id", plot_token_id),
    "cache": ("Local routing consistency", plot_cache),
    "position": ("Position in the sequence", plot_position),
}
"""Figure name -> (section title, plotting function), in report order."""
