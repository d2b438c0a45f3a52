"""The frontier as a markdown table (the plot: :mod:`dynroute.frontier.plot`).

Example:
    >>> from dynroute.frontier.verdict import record
    >>> recs = [record("top_k", f"k{k}", f"top_k(k={k})", 0, 3.2 - 0.2 * k, 6e6 * k, k)
    ...         for k in (1, 2)]
    >>> print(markdown_table(recs).splitlines()[2])
    | top_k(k=1) | 1 | 1.00 | 6 | 3.0000 | — | frontier |

Runs that recorded their training compute get three more columns, the training-compute
view (:mod:`~dynroute.frontier.training`): the mean k̄ over training, the margin at
that compute and its verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dynroute.common.numbers import MISSING, format_number
from dynroute.frontier.training import training_judgements, training_view
from dynroute.frontier.verdict import NOISE_SE, Judgement, judge, summarise

__all__ = ["HEADER", "TRAINING_HEADER", "markdown_table"]

HEADER = [
    "router",
    "seeds",
    "experts/token",
    "expert MFLOPs/token",
    "val loss",
    "margin to frontier (nats)",
    "verdict",
]
#: The training-compute view's columns, after :data:`HEADER`'s.
TRAINING_HEADER = [
    "experts/token in training (mean k̄ over steps)",
    "training-compute margin (nats)",
    "training-compute verdict",
]


def _pm(mean: float, std: float, fmt: str) -> str:
    text = format_number(mean, fmt)
    return text if math.isnan(std) else f"{text} ± {format_number(std, fmt.lstrip('+'))}"


def markdown_table(records: Sequence[dict[str, Any]], flops_unit: float = 1e6) -> str:
    """One row per router setting: k̄, FLOPs and loss (mean ± std over seeds), margin, verdict.

    The margin is the frontier's loss at the point's compute minus its loss, paired by
    seed (positive: below the frontier, better for its compute), ± ``NOISE_SE`` standard
    errors; top-k rows are the frontier itself.
    """
    judged = {j.summary.name: j for j in judge(records)}
    view = training_view(records)  # [] when the runs did not record it
    trained = {s.name: s for s in summarise(view)}
    trained_judged = {j.summary.name: j for j in training_judgements(records)}
    header = HEADER + (TRAINING_HEADER if view else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summarise(records):
        cells = [
            s.label, str(len(s.seeds)), _pm(s.mean_experts, s.mean_experts_std, ".2f"),
            format_number(s.expert_flops / flops_unit, ".3g"),
            _pm(s.val_loss, s.val_loss_std, ".4f"), *_margin_cells(judged.get(s.name)),
        ]  # fmt: skip
        if view:
            t = trained[s.name]
            cells += [_pm(t.mean_experts, t.mean_experts_std, ".2f")]
            cells += _margin_cells(trained_judged.get(s.name))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _margin_cells(j: Judgement | None) -> list[str]:
    """Margin ± noise and verdict of a point (top-k's rows: the frontier)."""
    if j is None:
        return [MISSING, "frontier"]
    if math.isnan(j.margin):
        return [MISSING, j.verdict]
    return [_pm(j.margin, NOISE_SE * j.margin_se, "+.4f"), j.verdict]
