"""Pure statistics on routings and on the count tables the recorder accumulates.

Everything here is a small function of tensors/arrays with a known answer on
hand-made inputs; the recorder only adds counts, the report only reads numbers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dynroute.routing import Routing

__all__ = [
    "binned_mean",
    "capacity_drops",
    "load_balance_stats",
    "rankdata",
    "router_entropy",
    "routing_mask",
    "spearman",
    "spearman_from_table",
    "token_id_consistency",
    "top_tokens_per_expert",
]


def routing_mask(routing: Routing) -> Tensor:
    """BoolTensor [N, E]: ``mask[n, e]`` is True when token n runs expert e.

    Example:
        >>> import torch
        >>> from dynroute.routing import top_k
        >>> routing_mask(top_k(torch.tensor([[0.0, 2.0, 1.0]]), k=2)).tolist()
        [[False, True, True]]
    """
    mask = torch.zeros(routing.num_tokens, routing.num_experts, dtype=torch.bool)
    mask[routing.token.cpu(), routing.expert.cpu()] = True
    return mask


def router_entropy(probs: Tensor, null_probs: Tensor | None = None) -> Tensor:
    """Tensor [N]: entropy (nats) of each token's router distribution.

    Null-expert probabilities, when present, are part of the distribution.

    Example:
        >>> import torch
        >>> router_entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]])).tolist()
        [0.6931471824645996, 0.0]
    """
    p = probs.detach().float()
    if null_probs is not None:
        p = torch.cat([p, null_probs.detach().float()], dim=-1)
    return (-torch.special.xlogy(p, p)).sum(-1) + 0.0  # + 0.0 turns -0.0 into 0.0


def rankdata(x: np.ndarray | Tensor) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties get the average of the ranks they span.

    Example:
        >>> rankdata([10, 20, 20, 5]).tolist()
        [2.0, 3.5, 3.5, 1.0]
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    # Each run of equal values shares the mean of its 1-based positions.
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], a.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    total = w.sum()
    if total <= 0:
        return float("nan")
    mx, my = (w * x).sum() / total, (w * y).sum() / total
    cov = (w * (x - mx) * (y - my)).sum()
    var = (w * (x - mx) ** 2).sum() * (w * (y - my) ** 2).sum()
    return float(cov / math.sqrt(var)) if var > 0 else float("nan")


def spearman(x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> float:
    """Spearman rank correlation of two 1-D samples (ties averaged); NaN if one is constant.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 20, 40])
        0.9486832980505138
    """
    rx, ry = rankdata(x), rankdata(y)
    if rx.size != ry.size:
        raise ValueError(f"spearman: x and y differ in length ({rx.size} vs {ry.size})")
    return _weighted_pearson(rx, ry, np.ones_like(rx))


def _table_ranks(counts: np.ndarray) -> np.ndarray:
    """Average 1-based rank of each category whose sizes are ``counts`` (in value order)."""
    before = np.cumsum(counts) - counts
    return before + (counts + 1) / 2.0


def spearman_from_table(table: np.ndarray | Tensor) -> float:
    """Spearman correlation from a joint count table ``[X bins, Y bins]``.

    ``table[i, j]`` counts the samples with the i-th smallest x value and the j-th
    smallest y value; the result equals :func:`spearman` on the expanded samples
    (every sample in a bin ties with its bin mates). This lets the recorder stream
    a correlation over millions of tokens with a fixed-size table.

    Example:
        >>> import numpy as np
        >>> spearman_from_table(np.array([[1, 0, 0], [0, 2, 0], [0, 0, 1]]))  # x: 1,2,2,3
        1.0
    """
    t = np.asarray(table, dtype=np.float64)
    rx = _table_ranks(t.sum(1))
    ry = _table_ranks(t.sum(0))
    gx, gy = np.meshgrid(rx, ry, indexing="ij")
    nz = t > 0
    return _weighted_pearson(gx[nz], gy[nz], t[nz])


def binned_mean(
    table: np.ndarray | Tensor, y_values: np.ndarray | Tensor, num_bins: int
) -> tuple[list[int], list[float], list[int]]:
    """Mean y in ``num_bins`` equal-count (quantile) groups of a joint table's x axis.

    Args:
        table: counts ``[X bins, Y bins]`` with x bins in ascending order.
        y_values: ``[Y bins]`` the y value of each column (e.g. experts 0..E).
        num_bins: number of groups; an x bin is never split, so groups are only
            roughly equal.

    Returns:
        tuple: per non-empty group: (index of its last x bin, mean y, sample count).

    Example:
        >>> import numpy as np
        >>> t = np.array([[2, 0], [0, 2], [0, 2], [1, 1]])  # 4 x-bins, y in {1, 2}
        >>> binned_mean(t, np.array([1.0, 2.0]), 2)
        ([1, 3], [1.5, 1.75], [4, 4])
    """
    t = np.asarray(table, dtype=np.float64)
    yv = np.asarray(y_values, dtype=np.float64)
    row_n = t.sum(1)
    row_y = t @ yv
    total = row_n.sum()
    if total == 0:
        return [], [], []
    # Group index of each x bin from the cumulative share at its midpoint.
    mid = (np.cumsum(row_n) - row_n / 2) / total
    group = np.minimum((mid * num_bins).astype(int), num_bins - 1)
    ends, means, counts = [], [], []
    for g in range(num_bins):
        sel = (group == g) & (row_n > 0)
        n = row_n[sel].sum()
        if n == 0:
            continue
        ends.append(int(np.flatnonzero(sel)[-1]))
        means.append(float(row_y[sel].sum() / n))
        counts.append(int(n))
    return ends, means, counts


def load_balance_stats(counts: np.ndarray | Tensor) -> dict[str, float]:
    """Coefficient of variation (population std / mean) and max/mean of tokens per expert.

    Example:
        >>> load_balance_stats([2, 2, 2, 2])
        {'cv': 0.0, 'max_over_mean': 1.0}
        >>> load_balance_stats([4, 0, 0, 0])
        {'cv': 1.7320508075688772, 'max_over_mean': 4.0}
    """
    c = np.asarray(counts, dtype=np.float64)
    mean = c.mean() if c.size else 0.0
    if mean == 0:
        return {"cv": float("nan"), "max_over_mean": float("nan")}
    return {"cv": float(c.std() / mean), "max_over_mean": float(c.max() / mean)}


def capacity_drops(mask: Tensor, capacity_factor: float) -> Tensor:
    """BoolTensor [B, T, E]: assignments a capacity limit would drop, earliest tokens first.

    Each row (sequence) is one group: expert e accepts at most
    ``ceil(capacity_factor * A_row / E)`` of the row's ``A_row`` assignments, served in
    position order, so later tokens are the ones dropped (the OpenMoE observation).

    Args:
        mask: BoolTensor [B, T, E] of assignments.
        capacity_factor: > 0.

    Example:
        >>> import torch
        >>> m = torch.tensor([[[1, 0], [1, 0], [1, 0], [0, 1]]], dtype=torch.bool)
        >>> capacity_drops(m, 1.0)[0, :, 0].tolist()  # capacity ceil(4/2) = 2
        [False, False, True, False]
    """
    if capacity_factor <= 0:
        raise ValueError(f"capacity_drops: capacity_factor must be > 0, got {capacity_factor}")
    m = mask.long()
    per_row = m.sum(dim=(1, 2))
    capacity = torch.ceil(capacity_factor * per_row / mask.shape[-1]).long()
    seen = m.cumsum(dim=1)  # 1-based arrival order of each assignment at its expert
    return mask & (seen > capacity[:, None, None])


def token_id_consistency(
    token: Tensor, expert: Tensor, count: Tensor, occurrences: Tensor, min_count: int = 1
) -> tuple[float, int]:
    """Share of a frequent token's occurrences routed to that token's most common expert.

    OpenMoE found routing is largely decided by the token id: if so, every occurrence
    of a token goes to the same expert and this share is 1. Averaged over tokens with
    at least ``min_count`` occurrences, weighted by occurrences.

    Args:
        token, expert, count: LongTensors [P]: ``count[i]`` occurrences of token
            ``token[i]`` routed to ``expert[i]`` (one row per observed pair).
        occurrences: LongTensor [V], occurrences of each token id.
        min_count: only tokens seen at least this often count.

    Returns:
        tuple: (weighted share in [0, 1], NaN if no token qualifies; tokens used).

    Example:
        >>> import torch
        >>> t, e = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
        >>> token_id_consistency(t, e, torch.tensor([3, 1, 2]), torch.tensor([4, 2]))
        (0.8333333333333334, 2)
    """
    if token.numel() == 0:
        return float("nan"), 0
    best = torch.zeros(occurrences.numel(), dtype=torch.long)
    best.scatter_reduce_(0, token, count, reduce="amax")
    keep = occurrences >= max(min_count, 1)
    used = int(keep.sum())
    if used == 0:
        return float("nan"), 0
    return int(best[keep].sum()) / int(occurrences[keep].sum()), used


def top_tokens_per_expert(
    token: Tensor,
    expert: Tensor,
    count: Tensor,
    occurrences: Tensor,
    num_experts: int,
    top: int = 8,
    min_count: int = 1,
) -> list[list[tuple[int, int, float]]]:
    """The tokens each expert sees most, as (token id, count, share of that token's occurrences).

    Only tokens seen at least ``min_count`` times are ranked, so one-off tokens do not
    crowd out the informative ones.

    Example:
        >>> import torch
        >>> t, e = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
        >>> top_tokens_per_expert(t, e, torch.tensor([3, 1, 2]), torch.tensor([4, 2]), 2, top=2)
        [[(0, 3, 0.75)], [(1, 2, 1.0), (0, 1, 0.25)]]
    """
    out: list[list[tuple[int, int, float]]] = []
    keep = occurrences[token] >= min_count
    for e in range(num_experts):
        sel = keep & (expert == e)
        toks, cnts = token[sel], count[sel]
        # Ties on count are broken by token id so the result is deterministic.
        order = np.lexsort((toks.numpy(), -cnts.numpy()))[:top]
        out.append(
            [(int(toks[i]), int(cnts[i]), int(cnts[i]) / int(occurrences[toks[i]])) for i in order]
        )
    return out
