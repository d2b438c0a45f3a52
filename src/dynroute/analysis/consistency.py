"""Local routing consistency: how well a small, slowly changing expert set covers a segment.

From "Not All Models Suit Expert Offloading" (Liang et al., 2025). For every window of
S consecutive tokens of a sequence (stride 1) we count how often each expert is used.

* SCH (segment cache best hit rate): a cache of C experts that knows the window ahead
  keeps the window's C most-used experts; its hit rate is the share of the window's
  expert uses they cover. Summed over windows, so it is hits / accesses overall.
* SRP (segment routing best performance): one fixed expert set per window — every
  expert used by at least t of its tokens — is "predicted" for all S tokens; the F1
  of these predictions against the real routing, with the best global t.

Both need only two small streaming accumulators per (layer, S): the sum over windows of
the window's expert counts sorted descending ``[E]`` and a histogram of per-(window,
expert) counts ``[S + 1]``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "cache_hit_rate",
    "segment_accumulators",
    "segment_routing_performance",
    "window_counts",
]


def window_counts(mask: Tensor, segment: int) -> Tensor:
    """LongTensor [B, T - S + 1, E]: expert use counts of every window of S tokens.

    Args:
        mask: BoolTensor [B, T, E] of assignments (row b is one sequence).
        segment: S, 1 <= S <= T.

    Example:
        >>> import torch
        >>> m = torch.tensor([[[1, 0], [1, 1], [0, 1]]], dtype=torch.bool)
        >>> window_counts(m, 2)[0].tolist()
        [[2, 1], [1, 2]]
    """
    if not 1 <= segment <= mask.shape[1]:
        raise ValueError(f"window_counts: segment must be in [1, {mask.shape[1]}], got {segment}")
    c = torch.nn.functional.pad(mask.long().cumsum(dim=1), (0, 0, 1, 0))
    return c[:, segment:] - c[:, :-segment]


def segment_accumulators(mask: Tensor, segment: int) -> tuple[Tensor, Tensor]:
    """The two additive summaries SCH and SRP are computed from.

    Args:
        mask: BoolTensor [B, T, E].
        segment: S <= T.

    Returns:
        tuple: ``sorted_sum`` LongTensor [E] (sum over windows of counts sorted
        descending) and ``count_hist`` LongTensor [S + 1] (how many (window, expert)
        pairs have each count 0..S).

    Example:
        >>> import torch
        >>> m = torch.tensor([[[1, 0], [1, 1], [0, 1]]], dtype=torch.bool)
        >>> [t.tolist() for t in segment_accumulators(m, 2)]
        [[4, 2], [0, 2, 2]]
    """
    counts = window_counts(mask, segment).reshape(-1, mask.shape[-1])
    sorted_sum = counts.sort(dim=-1, descending=True).values.sum(0)
    return sorted_sum, torch.bincount(counts.flatten(), minlength=segment + 1)


def cache_hit_rate(sorted_sum: Tensor | np.ndarray, cache_size: int) -> float:
    """SCH: best hit rate of a C-expert cache, from :func:`segment_accumulators`.

    Example:
        >>> cache_hit_rate([4, 2], 1)
        0.6666666666666666
    """
    s = torch.as_tensor(sorted_sum, dtype=torch.float64)
    total = float(s.sum())
    return float(s[:cache_size].sum()) / total if total else float("nan")


def segment_routing_performance(
    count_hist: Tensor | np.ndarray, num_experts: int
) -> dict[str, float]:
    """SRP: best F1 of predicting each window's frequent experts for all its tokens.

    For a threshold t, a window predicts every expert used by >= t of its S tokens for
    all S tokens: matches ``M(t) = sum_{c >= t} c h[c]``, predictions
    ``P(t) = S sum_{c >= t} h[c]``, real uses ``A = sum_c c h[c]``; F1 = 2M / (P + A).

    Args:
        count_hist: [S + 1] histogram of per-(window, expert) counts.
        num_experts: E (to turn predicted pairs into a mean set size per window).

    Returns:
        dict: ``f1`` (best), ``threshold`` (its smallest t), ``coverage`` (M/A: the share of
        routing covered by the predicted set), ``set_size`` (mean experts per window).

    Example:
        >>> segment_routing_performance([0, 2, 2], num_experts=2)  # S = 2
        {'f1': 0.8571428571428571, 'threshold': 1, 'coverage': 1.0, 'set_size': 2.0}
    """
    h = torch.as_tensor(count_hist, dtype=torch.float64)
    segment = h.numel() - 1
    c = torch.arange(segment + 1, dtype=torch.float64)
    uses = c * h
    matches = uses.flip(0).cumsum(0).flip(0)
    preds = segment * h.flip(0).cumsum(0).flip(0)
    total = float(uses.sum())
    if total == 0 or segment == 0:
        return {"f1": float("nan"), "threshold": 0, "coverage": float("nan"), "set_size": 0.0}
    f1 = 2 * matches[1:] / (preds[1:] + total)
    best = int(f1.argmax()) + 1
    windows = float(h.sum()) / num_experts
    return {
        "f1": float(f1[best - 1]),
        "threshold": best,
        "coverage": float(matches[best]) / total,
        "set_size": float(preds[best]) / segment / windows,
    }
