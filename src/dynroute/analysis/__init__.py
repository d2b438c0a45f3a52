"""Routing analysis: where a model spends its experts, and whether the papers' claims hold.

Record every MoE layer's routing while a model reads held-out text, reduce it to
``stats.json`` and render an HTML report with figures::

    from dynroute.analysis import analyze_checkpoint, render_report
    stats = analyze_checkpoint("runs/top_p", "analysis/top_p")
    render_report({"top_p": stats}, "analysis/top_p")

    from dynroute.analysis import compare_report
    compare_report("runs/top_k", "runs/top_p", "analysis/compare")   # side by side

Recording by hand: :class:`RoutingRecorder` (``begin_batch`` → ``record`` → ``end_batch``),
then :func:`summarize` (its example shows the whole cycle).
"""

from dynroute.analysis.consistency import (
    cache_hit_rate,
    segment_accumulators,
    segment_routing_performance,
    window_counts,
)
from dynroute.analysis.recorder import (
    LayerCounts,
    RecorderConfig,
    RoutingRecorder,
    find_routing,
    publish_routing,
)
from dynroute.analysis.report import render_report
from dynroute.analysis.run import analyze_checkpoint, analyze_model, load_stats, write_stats
from dynroute.analysis.stats import (
    binned_mean,
    capacity_drops,
    load_balance_stats,
    rankdata,
    router_entropy,
    routing_mask,
    spearman,
    spearman_from_table,
    token_id_consistency,
    top_tokens_per_expert,
)
from dynroute.analysis.summary import summarize
from dynroute.analysis.table import findings, summary_rows, summary_table
from dynroute.analysis.workflow import analyze, compare_report, load_runs, render_dir
from dynroute.evaluation import token_losses  # the loss analyze_model records

__all__ = [
    "LayerCounts",
    "RecorderConfig",
    "RoutingRecorder",
    "analyze",
    "analyze_checkpoint",
    "analyze_model",
    "binned_mean",
    "cache_hit_rate",
    "capacity_drops",
    "compare_report",
    "find_routing",
    "findings",
    "load_balance_stats",
    "load_runs",
    "load_stats",
    "publish_routing",
    "rankdata",
    "render_dir",
    "render_report",
    "router_entropy",
    "routing_mask",
    "segment_accumulators",
    "segment_routing_performance",
    "spearman",
    "spearman_from_table",
    "summarize",
    "summary_rows",
    "summary_table",
    "token_id_consistency",
    "token_losses",
    "top_tokens_per_expert",
    "window_counts",
    "write_stats",
]
