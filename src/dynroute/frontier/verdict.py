"""Seeds aggregated, the top-k frontier, and whether a point lies below it beyond noise.

Compute axis: **active expert FLOPs per token** = Σ over MoE layers of k̄_l × 6·d_model·d_ff,
where k̄_l is the layer's measured mean experts per token and 6·d_model·d_ff the forward
FLOPs of one SwiGLU expert (three d_model×d_ff matrices, a multiply-add counted as 2).

The frontier is top-k's points (k = 1, 2, 3) joined by straight lines in that plane. A
point's *margin* is the frontier's loss at the point's FLOPs minus the point's loss
(positive: below the frontier, i.e. better for its compute). Margins are paired by seed:
seed s of a router is compared with the frontier drawn through seed s of top-k (same
initialisation and batch order), which removes most of the run-to-run noise the two
share. A point is **below** (or **above**) the frontier when its mean margin is more than
twice its standard error over seeds away from zero (``NOISE_SE``), **on** it otherwise;
with one seed there is no noise estimate and the verdict says so.

Example:
    >>> recs = [record("top_k", "top_k-k1", "top_k(k=1)", 0, 3.0, 1.0),
    ...         record("top_k", "top_k-k2", "top_k(k=2)", 0, 2.8, 2.0),
    ...         record("top_p", "top_p-p0.4", "top_p(p=0.4)", 0, 2.85, 1.5)]
    >>> [round(m, 3) for m in judge(recs)[0].margins]
    [0.05]
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dynroute.frontier.sweep import FRONTIER_FAMILY

__all__ = [
    "NOISE_SE",
    "Judgement",
    "Summary",
    "expert_flops_per_token",
    "frontier_loss",
    "judge",
    "record",
    "summarise",
    "verdict_sentence",
]

#: A point is below/above the frontier when |mean margin| > NOISE_SE × its standard error.
NOISE_SE = 2.0


def expert_flops_per_token(d_model: int, d_ff: int, experts_per_layer: Iterable[float]) -> float:
    """Forward FLOPs of the experts one token activates: Σ_l k̄_l × 6·d_model·d_ff.

    Example:
        >>> expert_flops_per_token(128, 256, [2.0, 2.0, 2.0, 2.0])  # 4 layers of top-2
        1572864.0
    """
    return float(sum(experts_per_layer)) * 6.0 * d_model * d_ff


def record(
    family: str,
    name: str,
    label: str,
    seed: int,
    val_loss: float,
    expert_flops: float,
    mean_experts: float = math.nan,
    **extra: Any,
) -> dict[str, Any]:
    """One finished run as the aggregation reads it (``extra`` keys are kept as they are).

    Example:
        >>> record("top_k", "top_k-k2", "top_k(k=2)", 0, 2.5, 8.0, 2.0)["expert_flops"]
        8.0
    """
    return {
        "family": family,
        "name": name,
        "label": label,
        "seed": seed,
        "val_loss": float(val_loss),
        "expert_flops": float(expert_flops),
        "mean_experts_per_token": mean_experts,
        **extra,
    }


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


@dataclass(frozen=True)
class Summary:
    """One point aggregated over its seeds (std: sample standard deviation, NaN for 1 seed)."""

    family: str
    name: str
    label: str
    seeds: tuple[int, ...]
    val_loss: float
    val_loss_std: float
    expert_flops: float
    expert_flops_std: float
    mean_experts: float
    mean_experts_std: float

    @property
    def is_frontier(self) -> bool:
        """Whether this is one of the frontier's top-k points."""
        return self.family == FRONTIER_FAMILY


def summarise(records: Iterable[dict[str, Any]]) -> list[Summary]:
    """Mean and std over seeds of each point, in the order points first appear.

    Example:
        >>> s = summarise([record("top_k", "a", "a", 0, 2.0, 4.0, 2.0),
        ...                record("top_k", "a", "a", 1, 2.2, 4.0, 2.0)])
        >>> round(s[0].val_loss, 3), round(s[0].val_loss_std, 4)
        (2.1, 0.1414)
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["name"]].append(r)
    out = []
    for name, runs in groups.items():
        loss, flops = (
            _mean_sd([r["val_loss"] for r in runs]),
            _mean_sd([r["expert_flops"] for r in runs]),
        )
        kbar = _mean_sd([float(r["mean_experts_per_token"]) for r in runs])
        out.append(
            Summary(
                runs[0]["family"],
                name,
                runs[0]["label"],
                tuple(r["seed"] for r in runs),
                *loss,
                *flops,
                *kbar,
            )
        )
    return out


def frontier_loss(frontier: Sequence[tuple[float, float]], x: float) -> float | None:
    """The frontier's loss at compute ``x``: linear between its neighbouring points.

    Args:
        frontier: (FLOPs, loss) of the top-k points, any order.
        x: FLOPs per token.

    Returns:
        The interpolated loss, or None when ``x`` is outside the frontier's FLOPs range
        (no extrapolation: below top-1 or above the largest k there is no evidence).

    Example:
        >>> frontier_loss([(1.0, 3.0), (2.0, 2.8), (3.0, 2.7)], 1.5)
        2.9
        >>> frontier_loss([(1.0, 3.0), (2.0, 2.8)], 2.5) is None
        True
    """
    pts = sorted(frontier)
    if len(pts) < 2 or not pts[0][0] <= x <= pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            w = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
            return round(y0 + w * (y1 - y0), 12)
    return None  # pragma: no cover - the range check above makes this unreachable


@dataclass(frozen=True)
class Judgement:
    """A non-frontier point against the frontier.

    Attributes:
        summary: the point over its seeds.
        margins: per seed, frontier loss at the run's FLOPs minus its loss (positive:
            below the frontier), for the seeds where the run lies in the frontier's range.
        margin, margin_se: their mean and standard error (NaN with fewer than 2).
        verdict: ``below``, ``above``, ``on`` (within noise), ``one seed`` (no noise
            estimate) or ``outside`` (compute outside top-k's range).
    """

    summary: Summary
    margins: tuple[float, ...]
    margin: float
    margin_se: float
    verdict: str


def judge(records: Sequence[dict[str, Any]], noise_se: float = NOISE_SE) -> list[Judgement]:
    """Each non-frontier point's paired margin to the top-k frontier and its verdict.

    Raises:
        ValueError: fewer than two top-k points for some seed (no frontier to draw).

    Example:
        >>> recs = [record("top_k", f"k{k}", f"k{k}", s, 3.2 - 0.2 * k + 0.01 * s, k)
        ...         for k in (1, 2) for s in (0, 1, 2)]
        >>> recs += [record("p", "p", "p", s, 2.85 + 0.001 * s, 1.5) for s in (0, 1, 2)]
        >>> j = judge(recs)[0]
        >>> j.verdict, round(j.margin, 3)
        ('below', 0.059)
    """
    by_seed: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r["family"] == FRONTIER_FAMILY:
            by_seed[r["seed"]].append((r["expert_flops"], r["val_loss"]))
    seeds = {r["seed"] for r in records}
    short = sorted(s for s in seeds if len(by_seed.get(s, ())) < 2)
    if short:
        raise ValueError(
            f"the frontier needs at least two top_k settings for every seed; seed(s) "
            f"{short} have {len(by_seed.get(short[0], ()))}"
        )
    out = []
    for summary in summarise(records):
        if summary.is_frontier:
            continue
        margins = []
        for r in records:
            if r["name"] != summary.name:
                continue
            edge = frontier_loss(by_seed[r["seed"]], r["expert_flops"])
            if edge is not None:
                margins.append(edge - r["val_loss"])
        if not margins:
            mean, se, verdict = math.nan, math.nan, "outside"
        elif len(margins) < 2:
            mean, se, verdict = margins[0], math.nan, "one seed"
        else:
            mean = statistics.fmean(margins)
            se = statistics.stdev(margins) / math.sqrt(len(margins))
            verdict = (
                "below" if mean > noise_se * se else "above" if -mean > noise_se * se else "on"
            )
        out.append(Judgement(summary, tuple(margins), mean, se, verdict))
    return out


def _at(j: Judgement) -> str:
    s = j.summary
    spread = f" ± {noise_text(j)}" if not math.isnan(j.margin_se) else ""
    return f"{s.label} at k̄ {s.mean_experts:.2f} ({abs(j.margin):.3f}{spread} nats)"


def noise_text(j: Judgement) -> str:
    """The ± shown next to a margin: NOISE_SE standard errors.

    Example:
        >>> s = Summary("p", "p", "p", (0, 1), 2.0, 0.1, 1.0, 0.0, 1.5, 0.0)
        >>> noise_text(Judgement(s, (0.1, 0.2), 0.15, 0.05, "on"))
        '0.100'
    """
    return f"{NOISE_SE * j.margin_se:.3f}"


def verdict_sentence(judgements: Sequence[Judgement]) -> str:
    """One computed sentence: which routers beat the top-k frontier, which do not.

    Example:
        >>> s = Summary("top_p", "p", "top_p(p=0.4)", (0, 1), 2.9, 0.0, 1.0, 0.0, 1.5, 0.0)
        >>> verdict_sentence([Judgement(s, (0.2, 0.3), 0.25, 0.05, "below")])
        'Below the top-k frontier beyond seed noise: top_p(p=0.4) at k̄ 1.50 (0.250 ± 0.100 nats).'
    """
    if not judgements:
        return "Only top-k was trained: there is nothing to compare with its frontier."
    groups: dict[str, list[Judgement]] = defaultdict(list)
    for j in judgements:
        groups[j.verdict].append(j)
    parts = []
    judged = [j for j in judgements if not math.isnan(j.margin)]
    if judged and all(j.verdict == "one seed" for j in judged):
        top = max(judged, key=lambda j: j.margin)
        below = sorted((j for j in judged if j.margin > 0), key=lambda j: -j.margin)
        if below:
            parts.append(
                "One seed, so no noise estimate (train 3 seeds to test it): below the top-k "
                "frontier: " + ", ".join(_at(j) for j in below) + "."
            )
        else:
            parts.append(
                "One seed, so no noise estimate (train 3 seeds to test it): top-k wins; "
                f"the closest other router is {_at(top)} above the frontier."
            )
        groups.pop("one seed")
    elif "below" in groups:
        parts.append(
            "Below the top-k frontier beyond seed noise: "
            + ", ".join(_at(j) for j in sorted(groups["below"], key=lambda j: -j.margin))
            + "."
        )
    elif judged:
        top = max(judged, key=lambda j: j.margin)
        where = "below" if top.margin > 0 else "above"
        parts.append(
            "No router beats the top-k frontier beyond seed noise; the closest is "
            f"{top.summary.label} at k̄ {top.summary.mean_experts:.2f}, {abs(top.margin):.3f} "
            f"nats {where} it"
            + (f" (noise ± {noise_text(top)})" if not math.isnan(top.margin_se) else "")
            + "."
        )
    if "one seed" in groups:
        parts.append(
            "Not judged (one seed): " + ", ".join(j.summary.label for j in groups["one seed"]) + "."
        )
    for v, text in (("on", "Within noise of it"), ("above", "Above it (worse for their compute)")):
        if v in groups:
            parts.append(f"{text}: {', '.join(j.summary.label for j in groups[v])}.")
    if "outside" in groups:
        parts.append(
            "Outside top-k's compute range (not judged): "
            + ", ".join(
                f"{j.summary.label} (k̄ {j.summary.mean_experts:.2f})" for j in groups["outside"]
            )
            + "."
        )
    return " ".join(parts)
