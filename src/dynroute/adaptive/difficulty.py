"""Per-token difficulty (Duo-LLM): how much a token's loss drops when given more compute.

``difficulty = oracle loss at the lowest budget scored - lowest oracle loss over all
budgets scored`` (per token; with the default budgets 0..L, the loss with every layer
small minus the loss at the token's best budget). It is >= 0, and 0 for a token that
gains nothing from big layers. It is *not* the raw loss: :func:`difficulty_stats`
relates it to the raw loss (on the context route, the full model by default), to the
position in the window and to the frequency of the target token.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynroute.adaptive.oracle import OracleReport
from dynroute.analysis.stats import spearman

__all__ = ["binned_means", "difficulty_stats", "token_difficulty"]


def token_difficulty(oracle_losses: np.ndarray) -> np.ndarray:
    """Per-token loss drop ``[N]`` from the first budget row to the best row of ``[K, N]``.

    Example:
        >>> token_difficulty(np.array([[3.0, 1.0], [2.5, 1.2], [2.0, 1.5]])).tolist()
        [1.0, 0.0]
    """
    losses = np.asarray(oracle_losses, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[0] == 0:
        raise ValueError(f"oracle_losses must be [budgets, tokens], got shape {losses.shape}")
    return losses[0] - losses.min(0)


def binned_means(x: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Mean of ``y`` in (up to) ``bins`` quantile bins of ``x``; ties stay in one bin.

    Returns ``{"x": mean x per bin, "y": mean y per bin, "count": tokens per bin}``.

    Example:
        >>> binned_means(np.arange(4.0), np.array([0.0, 2.0, 4.0, 6.0]), bins=2)
        {'x': [0.5, 2.5], 'y': [1.0, 5.0], 'count': [2, 2]}
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size == 0:
        return {"x": [], "y": [], "count": []}
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(len(edges) - 2, 0))
    out: dict[str, list[Any]] = {"x": [], "y": [], "count": []}
    for b in range(max(len(edges) - 1, 1)):
        m = idx == b
        if m.any():
            out["x"].append(float(x[m].mean()))
            out["y"].append(float(y[m].mean()))
            out["count"].append(int(m.sum()))
    return out


def difficulty_stats(
    report: OracleReport, token_counts: np.ndarray | None = None, bins: int = 10
) -> dict[str, Any]:
    """Difficulty of every scored token and how it relates to other signals (JSON-ready).

    Args:
        report: from :func:`~dynroute.adaptive.oracle.run_oracle`.
        token_counts: occurrences of each token id (e.g. ``np.bincount`` of the training
            tokens); None: counted over the scored targets themselves.
        bins: histogram bins and quantile bins of the binned relations.

    Returns:
        ``mean``, ``share_zero`` (tokens that gain < 1e-6 nats), ``histogram`` /
        ``histogram_edges``, Spearman ``corr_raw_loss``, ``corr_position``,
        ``corr_log_target_frequency``, ``mean_early_positions`` /
        ``mean_late_positions`` (split at the median position), ``budgets`` (the first
        is the baseline) and ``binned``: ``{raw_loss, position, log_target_frequency}``
        -> :func:`binned_means` of difficulty.
    """
    drop = token_difficulty(report.oracle_losses)
    targets = np.asarray(report.targets)
    if token_counts is None:
        token_counts = np.bincount(targets)
    counts = np.asarray(token_counts)
    if counts.size <= int(targets.max(initial=0)):
        counts = np.concatenate([counts, np.zeros(int(targets.max()) + 1 - counts.size)])
    log_freq = np.log1p(counts[targets].astype(np.float64))
    positions = np.asarray(report.positions, dtype=np.float64)
    raw = np.asarray(report.context_losses, dtype=np.float64)
    early = positions < np.median(positions)
    hist, edges = np.histogram(drop, bins=bins)
    return {
        "budgets": [r["budget"] for r in report.rows],
        "tokens": int(drop.size),
        "mean": float(drop.mean()),
        "share_zero": float((drop < 1e-6).mean()),
        "histogram": hist.tolist(),
        "histogram_edges": edges.tolist(),
        "corr_raw_loss": spearman(drop, raw),
        "corr_position": spearman(drop, positions),
        "corr_log_target_frequency": spearman(drop, log_freq),
        "mean_early_positions": float(drop[early].mean()) if early.any() else float("nan"),
        "mean_late_positions": float(drop[~early].mean()) if (~early).any() else float("nan"),
        "binned": {
            "raw_loss": binned_means(raw, drop, bins),
            "position": binned_means(positions, drop, bins),
            "log_target_frequency": binned_means(log_freq, drop, bins),
        },
    }
