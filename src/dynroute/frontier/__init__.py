"""The compute–quality frontier: which router gives the lowest loss for its compute.

Sweep each router's knob to k̄ ≈ 1, 1.5, 2, 3 (:mod:`~dynroute.frontier.sweep`), train
every setting with the same data, steps and seeds (:mod:`~dynroute.frontier.runs`),
join top-k's points into the frontier and judge every other point against it beyond
seed noise (:mod:`~dynroute.frontier.verdict`); a table and a plot
(:mod:`~dynroute.frontier.report`, :mod:`~dynroute.frontier.plot`;
:func:`replot` redraws a finished run's plot from its results JSON). ``dynroute bench frontier``,
``benchmarks/frontier.py`` and ``dynroute demo`` are thin recipes over it.

Example:
    >>> from dynroute.frontier import record, verdict_sentence, judge
    >>> recs = [record("top_k", f"k{k}", f"top_k(k={k})", 0, 3.2 - 0.2 * k, k, k)
    ...         for k in (1, 2)]
    >>> verdict_sentence(judge(recs))
    'Only top-k was trained: there is nothing to compare with its frontier.'
"""

from dynroute.frontier.plot import frontier_figure, plot_frontier, replot
from dynroute.frontier.report import markdown_table
from dynroute.frontier.runs import check_frontier_config, point_config, run_dir, run_frontier
from dynroute.frontier.sweep import (
    FRONTIER_FAMILY,
    SWEEPS,
    TARGETS,
    Point,
    Sweep,
    point_from_text,
    sweep_points,
)
from dynroute.frontier.verdict import (
    NOISE_SE,
    Judgement,
    Summary,
    expert_flops_per_token,
    frontier_loss,
    judge,
    record,
    summarise,
    verdict_sentence,
)

__all__ = [
    "FRONTIER_FAMILY",
    "NOISE_SE",
    "SWEEPS",
    "TARGETS",
    "Judgement",
    "Point",
    "Summary",
    "Sweep",
    "check_frontier_config",
    "expert_flops_per_token",
    "frontier_figure",
    "frontier_loss",
    "judge",
    "markdown_table",
    "plot_frontier",
    "point_config",
    "point_from_text",
    "record",
    "replot",
    "run_dir",
    "run_frontier",
    "summarise",
    "sweep_points",
    "verdict_sentence",
]
