"""The Duo-LLM difficulty report: a self-contained ``report.html`` like `dynroute analyze`'s.

Built from an :class:`~dynroute.adaptive.oracle.OracleReport` alone: the oracle curve
next to random patterns and the trained router, which layers the oracle runs big per
budget (heatmap), and per-token difficulty (:mod:`dynroute.adaptive.difficulty`): its
histogram and its relation to raw loss, position and target frequency. PNGs are embedded
(base64) and also written to ``figures/``; the numbers go to ``adaptive_report.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from dynroute.adaptive.difficulty import difficulty_stats
from dynroute.adaptive.oracle import OracleReport
from dynroute.analysis.report import FIGURES_DIR, REPORT_FILE
from dynroute.common.html import escape, figure, heading, table, write_figure, write_page
from dynroute.common.jsonfile import write_json
from dynroute.common.numbers import format_number

__all__ = ["JSON_FILE", "REPORT_FILE", "plot_curve", "plot_difficulty", "render_adaptive_report"]

JSON_FILE = "adaptive_report.json"

NOTES = {
    "curve": "Mean loss per budget k (number of big layers per token). Oracle: each token "
    "gets its own best pattern of budget k, applied to it alone (the other positions run "
    "the context route). Random: R static patterns of budget k, one for all tokens; mean "
    "and best of R. Star: the trained routers (argmax per layer), at their mean number of "
    "big layers. Grey line: every token on the context route.",
    "layers": "Share of tokens whose oracle pattern at budget k runs the big module in "
    "layer l (each row sums to k).",
    "hist": "Difficulty of a token = its oracle loss at the lowest budget scored minus its "
    "lowest oracle loss over all budgets scored: how much its loss drops when given more "
    "compute (0: big layers do not help it). Not its raw loss.",
    "relations": "Mean difficulty in quantile bins of the token's raw loss (on the context "
    "route), of its position in the window and of log(1 + count of the target token). "
    "ρ: Spearman rank correlation over all tokens (ties averaged).",
}


def _fig(ncols: int = 1, w: float = 6.0, h: float = 3.6) -> tuple[Figure, Any]:
    fig = Figure(figsize=(w * ncols, h), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def plot_curve(report: OracleReport) -> Figure:
    """Oracle vs random (mean, best) vs router loss per budget.

    Example:
        >>> from dynroute.adaptive.oracle import OracleReport
        >>> rows = [{"budget": k, "oracle_loss": 2.0 - k, "random_mean_loss": 3.0,
        ...          "random_best_loss": 2.5, "router_loss": None} for k in (0, 1)]
        >>> r = OracleReport(rows, "exhaustive", None, 1, False, "big", 2, 2.0, [[0.0], [1.0]],
        ...                  *[np.zeros(2)] * 5)
        >>> plot_curve(r).axes[0].get_xlabel()
        'budget k (big layers per token)'
    """
    fig, (ax,) = _fig()
    ks = [r["budget"] for r in report.rows]
    ax.plot(ks, [r["oracle_loss"] for r in report.rows], "o-", label="oracle")
    ax.plot(ks, [r["random_mean_loss"] for r in report.rows], "^:", label="random (mean)")
    ax.plot(ks, [r["random_best_loss"] for r in report.rows], "v:", label="random (best)")
    for r in report.rows:
        if r.get("router_loss") is not None:
            x = r.get("router_big_layers", r["budget"])
            ax.plot([x], [r["router_loss"]], "r*", markersize=12, label="trained routers")
    ax.axhline(report.context_loss, color="gray", lw=0.8, label=f"context ({report.context})")
    ax.set(xlabel="budget k (big layers per token)", ylabel="loss (nats)")
    ax.set_xticks(ks)
    ax.legend(fontsize=8)
    return fig


def plot_layers(report: OracleReport) -> Figure:
    """Heatmap [budget, layer]: share of tokens whose oracle runs big there."""
    fig, (ax,) = _fig(w=5.0 + 0.3 * report.layers)
    share = np.asarray(report.oracle_big_share, dtype=np.float64)
    im = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
    ks = [r["budget"] for r in report.rows]
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xticks(range(report.layers))
    ax.set(xlabel="layer", ylabel="budget k", title="oracle runs big here (share of tokens)")
    for i in range(share.shape[0]):
        for j in range(share.shape[1]):
            ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] < 0.6 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax)
    return fig


def plot_difficulty(stats: dict[str, Any]) -> Figure:
    """Histogram of difficulty (log count)."""
    fig, (ax,) = _fig()
    edges = np.asarray(stats["histogram_edges"])
    ax.stairs(stats["histogram"], edges, fill=True, alpha=0.7)
    ax.set(xlabel="difficulty (nats of loss saved by more compute)", ylabel="tokens")
    ax.set_title(
        f"mean {stats['mean']:.3f}, {stats['share_zero']:.0%} of tokens gain nothing", fontsize=9
    )
    return fig


def plot_relations(stats: dict[str, Any]) -> Figure:
    """Binned mean difficulty vs raw loss, position and log target frequency."""
    fig, axes = _fig(3, w=4.2)
    panels = (
        ("raw_loss", "corr_raw_loss", "raw loss (nats)"),
        ("position", "corr_position", "position in the window"),
        ("log_target_frequency", "corr_log_target_frequency", "log(1 + target count)"),
    )
    for ax, (key, corr, label) in zip(axes, panels, strict=True):
        b = stats["binned"][key]
        ax.plot(b["x"], b["y"], "o-")
        ax.set(xlabel=label, ylabel="mean difficulty", title=f"ρ = {_fmt(stats[corr])}")
    return fig


def _fmt(x: Any, digits: int = 3) -> str:
    return format_number(x, f".{digits}f")


def _oracle_table(report: OracleReport) -> str:
    """Per budget: oracle, random (mean, best) and router loss."""
    header = ["budget", "oracle", "oracle ppl", "random mean", "random best", "router"]
    rows = [
        [
            str(r["budget"]),
            _fmt(r["oracle_loss"], 4),
            _fmt(r.get("oracle_ppl"), 2),
            _fmt(r["random_mean_loss"], 4),
            _fmt(r["random_best_loss"], 4),
            _fmt(r["router_loss"], 4)
            + (f" ({_fmt(r['router_big_layers'], 2)} big)" if "router_big_layers" in r else ""),
        ]
        for r in report.rows
    ]
    return table(header, rows)


def _difficulty_table(stats: dict[str, Any]) -> str:
    """The difficulty statistics of :func:`~dynroute.adaptive.difficulty.difficulty_stats`."""
    summary = [
        ["tokens", str(stats["tokens"])],
        ["baseline budget", str(stats["budgets"][0])],
        ["mean difficulty (nats)", _fmt(stats["mean"], 4)],
        ["share of tokens gaining nothing", _fmt(stats["share_zero"])],
        ["ρ(difficulty, raw loss)", _fmt(stats["corr_raw_loss"])],
        ["ρ(difficulty, position)", _fmt(stats["corr_position"])],
        ["ρ(difficulty, log target frequency)", _fmt(stats["corr_log_target_frequency"])],
        ["mean difficulty, first half of positions", _fmt(stats["mean_early_positions"], 4)],
        ["mean difficulty, second half of positions", _fmt(stats["mean_late_positions"], 4)],
    ]
    return table(["statistic", "value"], summary)


def _setup_note(report: OracleReport) -> str:
    """What was searched, on how many tokens, with which context route."""
    method = report.method
    if method != "exhaustive":
        method = f"BEAM search (width {report.beam_width})"
    return (
        f'<p class="note">{report.tokens:,} tokens, {report.layers} layers, '
        f"{'big/small/skip' if report.skip else 'big/small'} patterns, {method}; the other "
        f"positions run the <code>{escape(report.context)}</code> route (loss "
        f"{_fmt(report.context_loss, 4)}).</p>"
    )


def _figures(report: OracleReport, stats: dict[str, Any], figdir: Path) -> list[str]:
    """The four figures: written to ``figdir/<name>.png`` and embedded."""
    figures = {
        "curve": ("Oracle vs random patterns vs trained routers", plot_curve(report)),
        "layers": ("Which layers the oracle runs big, per budget", plot_layers(report)),
        "hist": ("Histogram of difficulty", plot_difficulty(stats)),
        "relations": (
            "Difficulty vs raw loss, position and token frequency",
            plot_relations(stats),
        ),
    }
    return [
        figure(write_figure(fig, figdir / f"{name}.png"), title, NOTES[name], anchor=name)
        for name, (title, fig) in figures.items()
    ]


def render_adaptive_report(
    report: OracleReport,
    out_dir: str | Path,
    token_counts: np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """Write ``out_dir/report.html``, ``figures/*.png`` and ``adaptive_report.json``.

    Args:
        report: from :func:`~dynroute.adaptive.oracle.run_oracle` (at least one budget).
        out_dir: output folder (created).
        token_counts: occurrences per token id for the frequency relation (e.g.
            ``np.bincount`` of the training tokens); None: counted over the scored targets.
        title: page title.

    Returns:
        Path: the report.
    """
    stats = difficulty_stats(report, token_counts)
    out = Path(out_dir)
    title = title or "Adaptive computation (Duo-LLM): oracle and token difficulty"
    sections = [
        heading(title, 1),
        _setup_note(report),
        heading("Oracle per budget", anchor="oracle") + _oracle_table(report),
        heading("Token difficulty", anchor="difficulty") + _difficulty_table(stats),
        *_figures(report, stats, out / FIGURES_DIR),
    ]
    payload = {"oracle": report.to_dict(), "difficulty": stats}
    write_json(out / JSON_FILE, payload)
    return write_page(out / REPORT_FILE, title, sections)
