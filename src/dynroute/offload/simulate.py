"""Replay a routing trace through cache policies and sizes: hit rate, bytes moved per
token, prefetch precision / recall, the gap to Belady's optimum.

Two replay modes: ``"tokens"`` (one token per step, layer after layer: batch-1 decoding)
and ``"calls"`` (each recorded forward call at once, its experts in ascending order: what
the runtime did; a replay of an offloaded run's trace in this mode makes the runtime's
decisions, see tests/offload).

Example:
    >>> trace = RoutingTrace([4], expert_bytes=100,
    ...     used=[[(0, 1)], [(1, 2)], [(0, 1)], [(2, 3)]], predicted=[[()]] * 4, calls=[4])
    >>> r = simulate(trace, "lru", 2)
    >>> r["hit_rate"], r["bytes_per_token"]
    (0.125, 175.0)
    >>> simulate(trace, "belady", 2)["hit_rate"]
    0.375
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from dynroute.offload.cache import ExpertCache
from dynroute.offload.policies import POLICIES, Key
from dynroute.offload.trace import RoutingTrace

__all__ = ["MODES", "demand", "prefetch_quality", "simulate", "sweep"]

MODES = ("tokens", "calls")


def union(sets: Iterable[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(sorted({e for s in sets for e in s}))


def steps(
    trace: RoutingTrace, mode: str
) -> Iterator[tuple[list[tuple[int, ...]], list[tuple[int, ...]]]]:
    """(used per layer, predicted per layer) per replay step."""
    if mode == "tokens":
        yield from zip(trace.used, trace.predicted, strict=True)
        return
    if mode != "calls":
        raise ValueError(f"simulate: mode must be one of {MODES}, got {mode!r}")
    start = 0
    for n in trace.calls:
        used, pred = trace.used[start : start + n], trace.predicted[start : start + n]
        layers = range(trace.num_layers)
        yield (
            [union(u[lay] for u in used) for lay in layers],
            [union(p[lay] for p in pred) for lay in layers],
        )
        start += n


def demand(trace: RoutingTrace, mode: str = "tokens") -> list[Key]:
    """Every demand access of a replay, in order."""
    return [(lay, e) for used, _ in steps(trace, mode) for lay, es in enumerate(used) for e in es]


def simulate(
    trace: RoutingTrace, policy: str, capacity: int, mode: str = "tokens"
) -> dict[str, Any]:
    """Replay ``trace`` through ``policy`` with ``capacity`` slots.

    Returns:
        dict: policy, capacity, share (of all experts), hit_rate, misses, loads,
        bytes_per_token, prefetch_used (prefetched experts used before eviction).
    """
    cache = ExpertCache(capacity, POLICIES.build(policy))
    cache.policy.set_future(demand(trace, mode))
    prefetch = cache.policy.prefetch
    for used, predicted in steps(trace, mode):
        for lay, es in enumerate(used):
            keys = [(lay, e) for e in es]
            if prefetch and lay + 1 < trace.num_layers:
                cache.prefetch([(lay + 1, e) for e in predicted[lay + 1]], protect=keys)
            for key in keys:
                cache.access(key)
    stats = cache.stats()
    tokens = max(trace.num_tokens, 1)
    return {
        "policy": policy,
        "capacity": capacity,
        "share": capacity / sum(trace.num_experts),
        **stats,
        "bytes_per_token": stats["loads"] * trace.expert_bytes / tokens,
    }


def prefetch_quality(trace: RoutingTrace) -> dict[str, float]:
    """Pre-gating's predictions against the real routing, over every (token, layer > 0):
    precision (predicted experts used), recall (used experts predicted).

    Example:
        >>> t = RoutingTrace([2, 2], 1, used=[[(0,), (0, 1)]], predicted=[[(), (1,)]], calls=[1])
        >>> prefetch_quality(t)
        {'precision': 1.0, 'recall': 0.5}
    """
    hit = pred = real = 0
    for used, predicted in zip(trace.used, trace.predicted, strict=True):
        for lay in range(1, trace.num_layers):
            u, p = set(used[lay]), set(predicted[lay])
            hit, pred, real = hit + len(u & p), pred + len(p), real + len(u)
    return {
        "precision": hit / pred if pred else float("nan"),
        "recall": hit / real if real else float("nan"),
    }


def sweep(
    trace: RoutingTrace,
    shares: Sequence[float] = (0.125, 0.25, 0.5, 0.75, 1.0),
    policies: Sequence[str] | None = None,
    mode: str = "tokens",
) -> list[dict[str, Any]]:
    """:func:`simulate` for every policy (default: all registered) and share of the experts;
    each row also has ``belady_gap`` (Belady's hit rate minus this one, same size)."""
    POLICIES.discover()
    names = list(policies) if policies is not None else sorted(POLICIES)
    total = sum(trace.num_experts)
    rows = []
    for share in shares:
        capacity = max(1, round(share * total))
        best = simulate(trace, "belady", capacity, mode)["hit_rate"]
        for name in names:
            row = simulate(trace, name, capacity, mode)
            rows.append({**row, "share": share, "belady_gap": best - row["hit_rate"]})
    return rows
