"""Expert offloading in the routing report: the first tokens' routing trace replayed
through every cache policy (``dynroute.offload``) at several cache sizes.

The local-routing-consistency measures of "Not All Models Suit Expert Offloading"
(SCH, SRP: ``consistency.py``) say how well the *best* cache that knows a window ahead
could do; this section says what real policies do on the same text: hit rate and bytes
moved per token for LRU, LFU, routing-aware reuse, pre-gating prefetch and Belady's
optimum, and pre-gating's precision / recall.

Example:
    >>> import torch
    >>> from dynroute.layers import MoE
    >>> model = MoE(8, 16, 4)
    >>> with offload_trace(model, max_tokens=10) as recorder:
    ...     _ = model(torch.randn(1, 12, 8))
    >>> stats = offload_stats(recorder)
    >>> stats["tokens"], stats["shares"], sorted(stats["hit_rate"])[:2]
    (10, [0.125, 0.25, 0.5, 0.75], ['belady', 'lfu'])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from torch import nn

from dynroute.common.html import heading, note, table
from dynroute.common.numbers import format_number
from dynroute.offload import TraceRecorder, prefetch_quality, record_trace, sweep

__all__ = ["OFFLOAD_SHARES", "OFFLOAD_TOKENS", "offload_section", "offload_stats", "offload_trace"]

#: Tokens of the analysed text replayed (the first ones, in order).
OFFLOAD_TOKENS = 1024
#: Cache sizes, as shares of all experts of all MoE layers.
OFFLOAD_SHARES = (0.125, 0.25, 0.5, 0.75)


@contextmanager
def offload_trace(
    model: nn.Module, max_tokens: int = OFFLOAD_TOKENS
) -> Iterator[TraceRecorder | None]:
    """Record the routing trace of ``model``'s first ``max_tokens`` tokens (None: the model
    has no MoE layer dynroute.offload knows)."""
    try:
        context: Any = record_trace(model, max_tokens=max_tokens)
    except ValueError:
        context = nullcontext(None)
    with context as recorder:
        yield recorder


def offload_stats(recorder: TraceRecorder | None) -> dict[str, Any] | None:
    """The ``offload`` entry of ``stats.json``: per policy, hit rate and bytes per token at
    each share of :data:`OFFLOAD_SHARES`, Belady's gap, pre-gating's precision / recall."""
    if recorder is None or recorder.trace().num_tokens == 0:
        return None
    trace = recorder.trace()
    rows = sweep(trace, shares=OFFLOAD_SHARES)
    policies = sorted({r["policy"] for r in rows})
    pick = {(r["policy"], r["share"]): r for r in rows}
    return {
        "tokens": trace.num_tokens,
        "expert_bytes": trace.expert_bytes,
        "shares": list(OFFLOAD_SHARES),
        "hit_rate": {p: [pick[p, s]["hit_rate"] for s in OFFLOAD_SHARES] for p in policies},
        "bytes_per_token": {
            p: [pick[p, s]["bytes_per_token"] for s in OFFLOAD_SHARES] for p in policies
        },
        "prefetch": prefetch_quality(trace),
    }


def offload_section(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The report's section: one table per run that has an ``offload`` entry."""
    parts: list[str] = []
    for label, s in runs.items():
        off = s.get("offload")
        if not off:
            continue
        shares = [f"{x:.0%}" for x in off["shares"]]
        rows = [
            [policy, *(format_number(v, ".3f") for v in rates)]
            for policy, rates in off["hit_rate"].items()
        ]
        pre = off["prefetch"]
        parts.append(
            heading(f"Expert offloading (simulated): {label}", 3)
            + note(
                f"The first {off['tokens']} tokens replayed one at a time through each cache "
                "policy (dynroute.offload) with this share of all experts resident: hit rate "
                "of expert uses. belady: the optimum that knows the future; pregate: LRU "
                "plus prefetch of what the next layer's gate picks for the current hidden "
                f"state (precision {format_number(pre['precision'], '.2f')}, recall "
                f"{format_number(pre['recall'], '.2f')}). Compare SCH above: the best hit rate "
                "of a cache that knows a window ahead. docs/offload.md."
            )
            + table(["policy", *shares], rows)
        )
    return [heading("Expert offloading"), *parts] if parts else []
