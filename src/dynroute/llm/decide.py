"""From predicted quality and known cost to a decision: ``argmax quality − λ·cost``.

λ is the willingness to pay: quality points per unit of cost one gives up. λ = 0 picks
the predicted best model, λ → ∞ the cheapest. :func:`lambda_grid` lists the λ values at
which some decision changes (so a sweep misses no operating point, whatever the scale of
the predictions), and the calibration functions pick λ for a budget or a target share of
calls to one model, as RouteLLM calibrates its threshold.

Example:
    >>> import torch
    >>> pred = torch.tensor([[0.5, 0.9]]); cost = torch.tensor([[1.0, 3.0]])
    >>> decide(pred, cost, 0.0).tolist(), decide(pred, cost, 1.0).tolist()
    ([1], [0])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "calibrate_to_budget",
    "calibrate_to_share",
    "decide",
    "lambda_grid",
    "sweep",
]


def decide(pred: Tensor, cost: Tensor, lam: float) -> Tensor:
    """Chosen model per query, ``[Q]`` long, from ``pred``/``cost`` ``[Q, M]``.

    Ties go to the cheaper model (then the lower index), so λ → ∞ always picks the
    cheapest and equal predictions never pay more than needed.
    """
    utility = -cost.double() if lam == float("inf") else pred.double() - lam * cost.double()
    best = utility.max(1, keepdim=True).values
    # Among (near-)ties, take the cheapest: mask the others with +inf cost.
    tied = utility >= best - 1e-12
    return torch.where(tied, cost.double(), torch.inf).argmin(1)


def lambda_grid(pred: Tensor, cost: Tensor, n: int = 64) -> list[float]:
    """Sorted λ values covering every kind of decision: 0, ``n`` quantiles of the
    breakpoints ``(pred_i − pred_j) / (cost_i − cost_j) > 0``, and ∞."""
    p, c = pred.double(), cost.double()
    dp = p[:, :, None] - p[:, None, :]
    dc = c[:, :, None] - c[:, None, :]
    br = (dp / dc)[(dc > 0) & (dp > 0)]
    grid = {0.0, float("inf")}
    if br.numel():
        qs = torch.linspace(0, 1, n, dtype=torch.float64)
        br = (
            br
            if br.numel() < 2_000_000
            else br[
                torch.randperm(br.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]
            ]
        )
        # Just above each quantile breakpoint, so the decision there has switched.
        grid.update((torch.quantile(br, qs) * (1 + 1e-9)).tolist())
    return sorted(grid)


def sweep(
    pred: Tensor, quality: Tensor, cost: Tensor, lambdas: list[float]
) -> list[dict[str, float]]:
    """``[{"lambda", "cost", "quality"}]``: mean realised cost and quality per λ."""
    rows = torch.arange(pred.shape[0])
    out = []
    for lam in lambdas:
        pick = decide(pred, cost, lam)
        out.append(
            {
                "lambda": lam,
                "cost": float(cost[rows, pick].double().mean()),
                "quality": float(quality[rows, pick].double().mean()),
            }
        )
    return out


def calibrate_to_budget(pred: Tensor, cost: Tensor, budget: float) -> float:
    """Smallest λ whose mean chosen cost is ≤ ``budget`` (∞ if none is).

    Chosen cost never increases with λ, so the first λ of the grid that fits is the
    best-quality choice within the budget.
    """
    rows = torch.arange(pred.shape[0])
    for lam in lambda_grid(pred, cost, n=256):
        if float(cost[rows, decide(pred, cost, lam)].double().mean()) <= budget:
            return lam
    return float("inf")


def calibrate_to_share(pred: Tensor, cost: Tensor, model: int, share: float) -> float:
    """Smallest λ sending at most ``share`` of the queries to ``model`` (e.g. the
    strongest), as RouteLLM calibrates its threshold to a share of strong calls."""
    for lam in lambda_grid(pred, cost, n=256):
        if float((decide(pred, cost, lam) == model).double().mean()) <= share:
            return lam
    return float("inf")
