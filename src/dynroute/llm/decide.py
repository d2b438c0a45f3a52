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

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Calibration",
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


@dataclasses.dataclass(frozen=True)
class Calibration:
    """λ calibrated to a target, with what it reached and what other λ reach.

    ``target``: what was asked for (``"strong_share"``: a share of the queries sent to one
    model; ``"budget_usd"``: a mean cost per query); ``asked``: its value; ``lam``: the
    calibrated λ, the smallest of :func:`lambda_grid` whose share or mean cost is at most
    ``asked`` (∞: always the cheapest model); ``reached``: the share or mean cost there;
    ``above``/``above_lam``: the next larger one, at the grid's λ before ``lam`` (None
    when ``lam`` is 0); ``lowest``/``highest``: the least and most any λ gives; ``met``:
    whether ``reached`` is what was asked (a budget: at most it; a share: within the
    calibration's tolerance of it).

    Example:
        >>> c = Calibration("strong_share", 0.3, 0.0, 0.25, None, None, 0.0, 0.25, False)
        >>> c.to_dict()["lambda"], c.to_dict()["met"]
        (0.0, False)
    """

    target: str
    asked: float
    lam: float
    reached: float
    above_lam: float | None
    above: float | None
    lowest: float
    highest: float
    met: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ``lambda`` is null when infinite (always the cheapest model)."""
        out = dataclasses.asdict(self)
        out["lambda"] = None if math.isinf(out.pop("lam")) else self.lam
        return out


def _calibrate(
    pred: Tensor, cost: Tensor, value: Callable[[Tensor], float], asked: float
) -> dict[str, Any]:
    """The smallest λ of the grid whose ``value(choice)`` is ≤ ``asked`` (∞ if none is),
    as the fields of a :class:`Calibration` but ``target`` and ``met``."""
    grid = lambda_grid(pred, cost, n=256)
    values = [value(decide(pred, cost, lam)) for lam in grid]
    # the first λ that fits, else ∞ (the grid's last: then the value there is > asked)
    i = next((i for i, v in enumerate(values) if v <= asked), len(grid) - 1)
    return {
        "asked": asked,
        "lam": grid[i],
        "reached": values[i],
        "above_lam": grid[i - 1] if i else None,
        "above": values[i - 1] if i else None,
        "lowest": min(values),
        "highest": max(values),
    }


def calibrate_to_budget(pred: Tensor, cost: Tensor, budget: float) -> Calibration:
    """Smallest λ whose mean chosen cost is ≤ ``budget`` (∞ if none is: then not ``met``).

    Chosen cost never increases with λ, so the first λ of the grid that fits is the
    best-quality choice within the budget.

    Example:
        >>> pred = torch.tensor([[0.5, 0.9]]); cost = torch.tensor([[1.0, 3.0]])
        >>> c = calibrate_to_budget(pred, cost, 0.5)
        >>> c.lam, c.reached, c.met
        (inf, 1.0, False)
    """
    rows = torch.arange(pred.shape[0])

    def mean_cost(pick: Tensor) -> float:
        return float(cost[rows, pick].double().mean())

    found = _calibrate(pred, cost, mean_cost, budget)
    return Calibration("budget_usd", **found, met=found["reached"] <= budget)


def calibrate_to_share(
    pred: Tensor, cost: Tensor, model: int, share: float, tolerance: float = 0.02
) -> Calibration:
    """Smallest λ sending at most ``share`` of the queries to ``model`` (e.g. the
    strongest), as RouteLLM calibrates its threshold to a share of strong calls.

    ``met`` when the share reached is within ``tolerance`` of ``share``. The shares λ
    gives are steps; a target between two of them (or above the share at λ = 0, below
    the one at λ = ∞) is not met, and ``reached``/``above`` say what λ gives around it.

    Example:
        >>> pred = torch.tensor([[0.5, 0.9], [0.5, 0.6]]); cost = torch.tensor([[1.0, 3.0]] * 2)
        >>> c = calibrate_to_share(pred, cost, model=1, share=0.5)
        >>> c.reached, c.met, (c.lowest, c.highest)
        (0.5, True, (0.0, 1.0))
        >>> c = calibrate_to_share(pred, cost, model=1, share=0.8)  # 50% or 100%, no between
        >>> c.reached, c.above, c.met
        (0.5, 1.0, False)
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"a share of queries is between 0 and 1, got {share}")

    def share_of_model(pick: Tensor) -> float:
        return float((pick == model).double().mean())

    found = _calibrate(pred, cost, share_of_model, share)
    return Calibration("strong_share", **found, met=abs(found["reached"] - share) <= tolerance)
