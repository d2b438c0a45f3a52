"""The frontier as a markdown table and a plot (validation loss vs active expert FLOPs).

Example:
    >>> from dynroute.frontier.verdict import record
    >>> recs = [record("top_k", f"k{k}", f"top_k(k={k})", 0, 3.2 - 0.2 * k, 6e6 * k, k)
    ...         for k in (1, 2)]
    >>> print(markdown_table(recs).splitlines()[2])
    | top_k(k=1) | 1 | 1.00 | 6 | 3.0000 | — | frontier |
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynroute.frontier.verdict import NOISE_SE, judge, summarise

__all__ = ["HEADER", "markdown_table", "plot_frontier"]

HEADER = [
    "router",
    "seeds",
    "experts/token",
    "expert MFLOPs/token",
    "val loss",
    "margin to frontier (nats)",
    "verdict",
]


def _pm(mean: float, std: float, fmt: str) -> str:
    spread = fmt.lstrip("+")
    return f"{mean:{fmt}}" if math.isnan(std) else f"{mean:{fmt}} ± {std:{spread}}"


def _or0(std: float) -> float:
    return 0.0 if math.isnan(std) else std


def markdown_table(records: Sequence[dict[str, Any]], flops_unit: float = 1e6) -> str:
    """One row per router setting: k̄, FLOPs and loss (mean ± std over seeds), margin, verdict.

    The margin is the frontier's loss at the point's compute minus its loss, paired by
    seed (positive: below the frontier, better for its compute), ± ``NOISE_SE`` standard
    errors; top-k rows are the frontier itself.
    """
    judged = {j.summary.name: j for j in judge(records)}
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for s in summarise(records):
        j = judged.get(s.name)
        if j is None:
            margin, verdict = "—", "frontier"
        elif math.isnan(j.margin):
            margin, verdict = "—", j.verdict
        else:
            margin = _pm(j.margin, NOISE_SE * j.margin_se, "+.4f")
            verdict = j.verdict
        lines.append(
            f"| {s.label} | {len(s.seeds)} | {_pm(s.mean_experts, s.mean_experts_std, '.2f')} | "
            f"{s.expert_flops / flops_unit:.3g} | {_pm(s.val_loss, s.val_loss_std, '.4f')} | "
            f"{margin} | {verdict} |"
        )
    return "\n".join(lines)


def plot_frontier(
    records: Sequence[dict[str, Any]], path: Path | str, title: str = "", flops_unit: float = 1e6
) -> Path:
    """PNG: validation loss vs active expert FLOPs per token, top-k joined as the frontier.

    Error bars are one standard deviation over seeds on both axes; each other router is
    one marker style, its settings joined by a dashed line in compute order.

    Returns:
        Path: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynroute.analysis.plots import save_figure

    summaries = summarise(records)
    families = list(dict.fromkeys(s.family for s in summaries))
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^v<>Ph*X"
    for i, family in enumerate(families):
        pts = sorted((s for s in summaries if s.family == family), key=lambda s: s.expert_flops)
        frontier = pts[0].is_frontier
        x = [s.expert_flops / flops_unit for s in pts]
        y = [s.val_loss for s in pts]
        xerr = [_or0(s.expert_flops_std) / flops_unit for s in pts]
        yerr = [_or0(s.val_loss_std) for s in pts]
        ax.errorbar(
            x,
            y,
            xerr=xerr,
            yerr=yerr,
            fmt=("-" if frontier else "--") + markers[i % len(markers)],
            color="black" if frontier else f"C{i % 10}",
            lw=2.0 if frontier else 1.0,
            capsize=3,
            label=f"{family} (frontier)" if frontier else family,
            zorder=3 if frontier else 2,
        )
        for s, xi, yi in zip(pts, x, y, strict=True):
            text = f"k={s.label.split('k=')[-1].rstrip(')')}" if frontier else s.label
            ax.annotate(
                text,
                (xi, yi),
                textcoords="offset points",
                xytext=(5, 5) if frontier else (5, -11),
                fontsize=7,
            )
    ax.set(
        xlabel="active expert MFLOPs per token (measured k̄ × layers × 6·d_model·d_ff)",
        ylabel="validation loss (nats)",
        title=title or "compute–quality frontier",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
