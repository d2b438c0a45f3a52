"""Turn a recorder's streaming counts into ``stats.json`` (plain numbers, no tensors).

The report and the plots read only this dictionary, so a report can be re-rendered
(or two runs compared) without running a model again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dynroute.analysis.consistency import cache_hit_rate, segment_routing_performance
from dynroute.analysis.recorder import LayerCounts, RoutingRecorder, grow
from dynroute.analysis.stats import (
    binned_mean,
    load_balance_stats,
    spearman_from_table,
    token_id_consistency,
    top_tokens_per_expert,
)

__all__ = ["STATS_VERSION", "default_cache_sizes", "summarize"]

STATS_VERSION = 1
DIFFICULTY_BINS = 10


def _r(x: float, digits: int = 6) -> float | None:
    """Round for JSON; NaN/inf become None (JSON has no NaN)."""
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def _rl(xs: Sequence[float] | np.ndarray, digits: int = 6) -> list[float | None]:
    return [_r(float(x), digits) for x in xs]


def _nanmean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return _r(sum(vals) / len(vals)) if vals else None


def default_cache_sizes(num_experts: int) -> list[int]:
    """Cache sizes C to report: powers of two below E, and E.

    Example:
        >>> default_cache_sizes(16), default_cache_sizes(6)
        ([1, 2, 4, 8, 16], [1, 2, 4, 6])
    """
    sizes = [1 << i for i in range(num_experts.bit_length()) if (1 << i) < num_experts]
    return [*sizes, num_experts]


def _difficulty(table: torch.Tensor, bin_width: float, y: np.ndarray) -> dict[str, Any]:
    """Mean experts in loss-quantile groups plus the Spearman correlation."""
    t = table.numpy()
    ends, means, counts = binned_mean(t, y, DIFFICULTY_BINS)
    return {
        "spearman": _r(spearman_from_table(t)),
        "bin_upper": _rl([(e + 1) * bin_width for e in ends], 4),
        "mean_experts": _rl(means),
        "count": counts,
    }


def _layer_summary(
    lc: LayerCounts,
    occurrences: torch.Tensor,
    cfg_width: float,
    cache_sizes: list[int],
    min_count: int,
    top: int,
    decode: Callable[[int], str] | None,
) -> dict[str, Any]:
    e = lc.num_experts
    ks = np.arange(e + 1, dtype=np.float64)
    hist = lc.experts_hist.numpy()
    n = max(int(hist.sum()), 1)
    load = load_balance_stats(lc.expert_tokens.numpy())
    ent = lc.entropy_experts
    out: dict[str, Any] = {
        "num_experts": e,
        "tokens": int(hist.sum()),
        "mean_experts": _r(float((hist * ks).sum() / n)),
        "experts_hist": hist.tolist(),
        "loss": _difficulty(lc.loss_experts, cfg_width, ks),
        "entropy": _difficulty(ent, 1.0 / ent.shape[0], ks),
        "expert_tokens": lc.expert_tokens.tolist(),
        "load_cv": _r(load["cv"]),
        "load_max_over_mean": _r(load["max_over_mean"]),
    }
    pos_t = lc.pos_tokens.double()
    out["position_mean_experts"] = _rl((lc.pos_assignments / pos_t.clamp(min=1)).tolist(), 4)
    out["position_drop_rate"] = _rl((lc.pos_dropped / lc.pos_assignments.clamp(min=1)).tolist(), 4)
    out["drop_rate"] = _r(float(lc.pos_dropped.sum()) / max(int(lc.pos_assignments.sum()), 1))

    out["cache_hit_rate"] = {
        str(s): {str(c): _r(cache_hit_rate(v, c)) for c in cache_sizes if c <= e}
        for s, v in sorted(lc.seg_sorted.items())
    }
    out["srp"] = {
        str(s): {k: _r(v) for k, v in segment_routing_performance(h, e).items()}
        for s, h in sorted(lc.seg_hist.items())
    }

    tok, ex, cnt = lc.pairs.pairs()
    occ = grow(occurrences, int(tok.max()) + 1 if tok.numel() else 0)
    share, used = token_id_consistency(tok, ex, cnt, occ, min_count)
    stok, sex, scnt = lc.shuffled_pairs.pairs()
    occ_s = grow(occurrences, int(stok.max()) + 1 if stok.numel() else 0)
    base, _ = token_id_consistency(stok, sex, scnt, occ_s, min_count)
    out["token_id_consistency"] = _r(share)
    out["token_id_baseline"] = _r(base)
    out["token_id_tokens"] = used
    tops = top_tokens_per_expert(tok, ex, cnt, occ, e, top=top, min_count=min_count)
    out["top_tokens"] = [
        [
            {"id": i, "text": decode(i) if decode else str(i), "count": c, "share": _r(s, 4)}
            for i, c, s in row
        ]
        for row in tops
    ]
    return out


def _require_routing(recorder: RoutingRecorder) -> None:
    if not recorder.layers:
        raise ValueError(
            "summarize: the recorder saw no routing; was it attached to the model's MoE "
            "layers (recorder.attach_model(model)) before the forward pass?"
        )


def _layer_summaries(
    recorder: RoutingRecorder,
    indices: list[int],
    sizes: list[int],
    min_count: int,
    top: int,
    decode: Callable[[int], str] | None,
) -> list[dict[str, Any]]:
    """:func:`_layer_summary` of the layers ``indices``, in that order."""
    width = recorder.config.loss_bin_width
    occurrences = recorder.token_occurrences
    return [
        _layer_summary(recorder.layers[i], occurrences, width, sizes, min_count, top, decode)
        for i in indices
    ]


def _pooled_difficulty(recorder: RoutingRecorder) -> dict[str, Any]:
    """Experts a token runs in all layers together vs its loss."""
    total = recorder.total_loss_experts
    width = recorder.config.loss_bin_width
    return _difficulty(total, width, np.arange(total.shape[1], dtype=np.float64))


def _pooled_consistency(
    layers: list[dict[str, Any]], sizes: list[int]
) -> tuple[list[str], dict[str, dict[str, float | None]], dict[str, float | None]]:
    """Segment lengths S seen in any layer, the mean over layers of SCH per (S, C) and of
    SRP's best F1 per S (a layer without a value does not count)."""
    segs = sorted({s for lay in layers for s in lay["cache_hit_rate"]}, key=int)
    cache = {
        s: {
            str(c): _nanmean([lay["cache_hit_rate"].get(s, {}).get(str(c)) for lay in layers])
            for c in sizes
        }
        for s in segs
    }
    srp = {s: _nanmean([lay["srp"].get(s, {}).get("f1") for lay in layers]) for s in segs}
    return segs, cache, srp


def _pooled_hist(layers: list[dict[str, Any]]) -> list[int]:
    """Tokens per number of experts, summed over layers (layers may differ in E)."""
    hist_len = max(len(lay["experts_hist"]) for lay in layers)
    overall_hist = np.zeros(hist_len, dtype=np.int64)
    for lay in layers:
        overall_hist[: len(lay["experts_hist"])] += lay["experts_hist"]
    return overall_hist.tolist()


def _pooled_entropy(recorder: RoutingRecorder, max_e: int) -> dict[str, Any]:
    """Experts vs router entropy over every layer's (entropy bin, experts) counts."""
    ent_rows = max(lay_c.entropy_experts.shape[0] for lay_c in recorder.layers.values())
    ent_table = torch.zeros(ent_rows, max_e + 1, dtype=torch.long)
    for lc in recorder.layers.values():
        ent_table[:, : lc.num_experts + 1] += lc.entropy_experts
    return _difficulty(ent_table, 1.0 / ent_rows, np.arange(max_e + 1, dtype=np.float64))


def _pooled_positions(
    recorder: RoutingRecorder, pos_len: int
) -> tuple[list[float | None], list[float | None]]:
    """Mean experts per token and capacity drop rate by position, over every layer."""
    pos_tokens = torch.zeros(pos_len, dtype=torch.float64)
    pos_assign = torch.zeros(pos_len, dtype=torch.float64)
    pos_drop = torch.zeros(pos_len, dtype=torch.float64)
    for lc in recorder.layers.values():
        t = lc.pos_tokens.numel()
        pos_tokens[:t] += lc.pos_tokens
        pos_assign[:t] += lc.pos_assignments
        pos_drop[:t] += lc.pos_dropped
    mean_experts = _rl((pos_assign / pos_tokens.clamp(min=1)).tolist(), 4)
    return mean_experts, _rl((pos_drop / pos_assign.clamp(min=1)).tolist(), 4)


def _meta(
    recorder: RoutingRecorder,
    layers: list[dict[str, Any]],
    indices: list[int],
    segs: list[str],
    sizes: list[int],
    min_token_count: int,
    pos_len: int,
) -> dict[str, Any]:
    """What was measured and with which settings (``stats["meta"]``, before the caller's)."""
    return {
        "num_tokens": recorder.num_tokens,
        "num_sequences": recorder.num_sequences,
        "num_layers": len(layers),
        "layer_indices": indices,
        "num_experts": [lay["num_experts"] for lay in layers],
        "capacity_factor": recorder.config.capacity_factor,
        "segment_lengths": [int(s) for s in segs],
        "cache_sizes": sizes,
        "min_token_count": min_token_count,
        "loss_bin_width": recorder.config.loss_bin_width,
        "max_position": pos_len,
    }


def summarize(
    recorder: RoutingRecorder,
    *,
    cache_sizes: Sequence[int] | None = None,
    min_token_count: int = 8,
    top_tokens: int = 8,
    decode: Callable[[int], str] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready statistics of everything ``recorder`` saw.

    Top-level keys (one entry per layer in list values, layers in index order):
    ``experts_per_layer`` (mean experts/token), ``difficulty_spearman`` (experts a
    token runs in all layers together vs its loss), ``entropy_spearman``,
    ``load_cv``, ``token_id_consistency`` (+ ``token_id_baseline``: the same with token
    ids shuffled), ``cache_hit_rate`` (``{S: {C: mean over layers}}``), ``srp``
    (``{S: mean best F1 over layers}``), ``drop_rate``, ``mean_loss``, ``layers`` (all
    per-layer detail: histograms, difficulty curves, load, positions, top tokens) and
    ``meta``.

    Args:
        recorder: a recorder that has seen at least one batch.
        cache_sizes: C values for SCH (default: powers of two up to E).
        min_token_count: a token id needs this many occurrences to count in the
            token-id statistics.
        top_tokens: tokens listed per expert.
        decode: token id -> text for the top-token tables.
        meta: extra run information stored under ``meta``.

    Example:
        >>> import torch
        >>> from dynroute.routing import top_k
        >>> rec = RoutingRecorder()
        >>> rec.begin_batch(torch.arange(8).view(1, 8))
        >>> rec.record(0, top_k(torch.randn(8, 4), k=2))
        >>> rec.end_batch(torch.rand(1, 8))
        >>> summarize(rec)["experts_per_layer"]
        [2.0]
    """
    _require_routing(recorder)
    indices = sorted(recorder.layers)
    max_e = max(lc.num_experts for lc in recorder.layers.values())
    sizes = list(cache_sizes) if cache_sizes else default_cache_sizes(max_e)
    layers = _layer_summaries(recorder, indices, sizes, min_token_count, top_tokens, decode)
    overall = _pooled_difficulty(recorder)
    entropy = _pooled_entropy(recorder, max_e)
    segs, cache, srp = _pooled_consistency(layers, sizes)
    pos_len = max(len(lay["position_mean_experts"]) for lay in layers)
    pos_experts, pos_drops = _pooled_positions(recorder, pos_len)
    loss = _r(recorder.loss_sum / recorder.loss_tokens) if recorder.loss_tokens else None
    return {
        "version": STATS_VERSION,
        "meta": {
            **_meta(recorder, layers, indices, segs, sizes, min_token_count, pos_len),
            **(meta or {}),
        },
        "mean_loss": loss,
        "experts_per_token": _nanmean([lay["mean_experts"] for lay in layers]),
        "experts_per_layer": [lay["mean_experts"] for lay in layers],
        "experts_hist": _pooled_hist(layers),
        "difficulty_spearman": overall["spearman"],
        "difficulty_spearman_per_layer": [lay["loss"]["spearman"] for lay in layers],
        "difficulty": overall,
        "entropy_spearman": entropy["spearman"],
        "entropy_spearman_per_layer": [lay["entropy"]["spearman"] for lay in layers],
        "entropy": entropy,
        "load_cv": [lay["load_cv"] for lay in layers],
        "load_max_over_mean": [lay["load_max_over_mean"] for lay in layers],
        "token_id_consistency": [lay["token_id_consistency"] for lay in layers],
        "token_id_baseline": [lay["token_id_baseline"] for lay in layers],
        "cache_hit_rate": cache,
        "srp": srp,
        "drop_rate": [lay["drop_rate"] for lay in layers],
        "position_mean_experts": pos_experts,
        "position_drop_rate": pos_drops,
        "layers": layers,
    }
