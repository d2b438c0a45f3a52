"""The training-compute view: each router placed by the experts it activated while training.

The frontier's compute axis is the *final* experts per token (k̄ measured on the
evaluation set after training). A router whose k̄ changes while it trains (ReLU routing
starts dense and its L1 term makes it sparse; SMoE-Dropout grows k to ``k_end``; a
controller settles on its target) paid for more or fewer expert FLOPs than that point
says. The training loop records the mean k̄ over every training step
(:class:`~dynroute.train.compute.TrainingCompute`); this view moves each point to its
training expert FLOPs per token, Σ_l (mean over steps of k̄_l) × 6·d_model·d_ff, i.e.
training expert FLOPs ÷ training tokens (a static top-k has both views equal, so the
frontier stays where it is), and judges it against the frontier again with the same
paired-seed rule (:func:`~dynroute.frontier.verdict.judge`).

Example:
    >>> from dynroute.frontier.verdict import record
    >>> recs = [record("top_k", f"k{k}", f"top_k(k={k})", 0, 3.2 - 0.2 * k, k, k,
    ...                training_expert_flops=k, training_mean_experts_per_token=k)
    ...         for k in (1, 2, 3)]
    >>> recs.append(record("relu", "r", "relu()", 0, 2.85, 1.5, 1.5,
    ...                    training_expert_flops=2.4, training_mean_experts_per_token=2.4))
    >>> [j.verdict for j in judge(training_view(recs))], round(extra_compute(recs)["r"], 2)
    (['one seed'], 0.6)
    >>> print(training_sentence(recs))  # doctest: +NORMALIZE_WHITESPACE
    relu() is 0.050 nats below the frontier (one seed) at its final k̄ 1.50, but it trained
    at a mean k̄ of 2.40: 60% more expert compute than its final k̄ says; at its training
    compute it is 0.130 nats above the frontier (one seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dynroute.frontier.verdict import Judgement, Summary, judge, noise_text, summarise

__all__ = [
    "SAME_COMPUTE",
    "extra_compute",
    "has_training_view",
    "training_judgements",
    "training_sentence",
    "training_view",
]

#: Within this relative difference a router trained at its final k̄ (both views agree).
SAME_COMPUTE = 0.02

# what a record holds of the view (runs.training_fields), by the final view's key
_KEYS = {
    "expert_flops": "training_expert_flops",
    "mean_experts_per_token": "training_mean_experts_per_token",
}


def has_training_view(records: Sequence[dict[str, Any]]) -> bool:
    """Whether every run recorded its training compute (older results did not).

    Example:
        >>> has_training_view([{"expert_flops": 1.0}])
        False
    """
    return bool(records) and all(
        r.get(key) is not None and not math.isnan(r[key]) for r in records for key in _KEYS.values()
    )


def training_view(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with their compute (FLOPs, k̄) taken over training instead of at the end;
    [] when some run did not record it.

    Example:
        >>> training_view([{"expert_flops": 1.0, "mean_experts_per_token": 1.0,
        ...                 "training_expert_flops": 2.0,
        ...                 "training_mean_experts_per_token": 2.0}])[0]["expert_flops"]
        2.0
    """
    if not has_training_view(records):
        return []
    return [{**r, **{final: r[key] for final, key in _KEYS.items()}} for r in records]


def training_judgements(records: Sequence[dict[str, Any]]) -> list[Judgement]:
    """:func:`~dynroute.frontier.verdict.judge` in the training-compute view ([] without it)."""
    view = training_view(records)
    return judge(view) if view else []


def extra_compute(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per router setting: training expert compute over its final k̄'s, minus 1 (mean over
    seeds of each; 0.35 = 35 % more expert FLOPs in training than the final k̄ says).

    Example:
        >>> recs = [{"name": "r", "family": "relu", "label": "relu()", "seed": 0,
        ...          "val_loss": 3.0, "expert_flops": 2.0, "mean_experts_per_token": 1.0,
        ...          "training_expert_flops": 3.0, "training_mean_experts_per_token": 1.5}]
        >>> extra_compute(recs)
        {'r': 0.5}
    """
    view = training_view(records)
    if not view:
        return {}
    final = {s.name: s.expert_flops for s in summarise(records)}
    return {s.name: s.expert_flops / final[s.name] - 1.0 for s in summarise(view)}


def _outside(s: Summary, frontier: Sequence[Summary]) -> str:
    """Where a point outside top-k's compute range stands against the frontier's end
    point nearest to it (more compute and a higher loss than top-3: worse, plainly)."""
    ends = sorted(frontier, key=lambda f: f.expert_flops)
    if not ends:
        return "outside top-k's compute range (not judged)"
    edge = ends[-1] if s.expert_flops > ends[-1].expert_flops else ends[0]
    gap = edge.val_loss - s.val_loss
    return (
        f"outside top-k's compute range (not judged: {edge.label} at k̄ {edge.mean_experts:.2f} "
        f"is the nearest point; its loss is {abs(gap):.3f} nats {'above' if gap > 0 else 'below'}"
        " this one's)"
    )


def _where(j: Judgement, frontier: Sequence[Summary] = ()) -> str:
    """``0.050 nats below the frontier (± 0.020)``, or why it is not judged."""
    if math.isnan(j.margin):
        return _outside(j.summary, frontier)
    side = "below" if j.margin > 0 else "above"
    if j.verdict == "one seed":
        return f"{abs(j.margin):.3f} nats {side} the frontier (one seed)"
    noise = f" ± {noise_text(j)}" if not math.isnan(j.margin_se) else ""
    name = {"below": "below", "above": "above", "on": "on (within noise of)"}[j.verdict]
    return f"{name} the frontier ({j.margin:+.3f}{noise} nats)"


def training_sentence(records: Sequence[dict[str, Any]]) -> str:
    """Each router's verdict in both views, in words: one sentence per router whose
    training compute differs from its final k̄'s by more than :data:`SAME_COMPUTE` or
    whose verdict changes, one for the rest.

    Returns "" when the runs did not record their training compute.
    """
    view = training_view(records)
    if not view:
        return ""
    final = {j.summary.name: j for j in judge(records)}
    extra = extra_compute(records)
    frontier = [s for s in summarise(view) if s.is_frontier]
    parts, same = [], []
    for jt in judge(view):
        jf, more = final[jt.summary.name], extra[jt.summary.name]
        if abs(more) <= SAME_COMPUTE and jf.verdict == jt.verdict:
            same.append(jt.summary.label)
            continue
        s, ts = jf.summary, jt.summary
        more_text = f"{abs(more):.0%} {'more' if more > 0 else 'less'}"
        link = "but" if (more > 0) == (jf.margin > 0) else "and"
        parts.append(
            f"{s.label} is {_where(jf, frontier)} at its final k̄ {s.mean_experts:.2f}, {link} it "
            f"trained at a mean k̄ of {ts.mean_experts:.2f}: {more_text} expert compute than its "
            f"final k̄ says; at its training compute it is {_where(jt, frontier)}."
        )
    if same:
        parts.append(
            "Trained at their final k̄ (within "
            f"{SAME_COMPUTE:.0%}), same verdict in both views: {', '.join(same)}."
        )
    return " ".join(parts)
