"""Find the top-p threshold that gives a target number of experts per token."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dynroute.hf.apply import adapted_blocks, apply_routing, reset_routing_stats, routing_stats
from dynroute.hf.evaluate import TextInput, as_token_ids, token_windows, window_batches

__all__ = ["Calibration", "calibrate_p"]


@dataclass
class Calibration:
    """Result of :func:`calibrate_p`; the model is left routed with these p values.

    Attributes:
        p: the chosen p (one float), or ``{layer: p}`` with ``per_layer=True``.
        mean_experts: mean experts per token the final setting gives on the texts.
        per_layer: ``{layer: mean experts}`` of the final setting.
        target: the requested mean.
        steps: every trial, ``{"p": ..., "mean_experts": ...}`` (per layer: dicts).
    """

    p: float | dict[Any, float]
    mean_experts: float
    per_layer: dict[Any, float]
    target: float
    steps: list[dict[str, Any]] = field(default_factory=list)


@torch.no_grad()
def _measure(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, Any]:
    reset_routing_stats(model)
    device = next(model.parameters()).device
    for batch in batches:
        model(input_ids=batch.to(device), use_cache=False)
    return routing_stats(model)


def _key(block: Any) -> Any:
    return block.layer_index if block.layer_index is not None else block.layer_name


def _check_target(target_experts: float, blocks: list[Any], max_experts: int | None) -> None:
    ceiling = min(max_experts or b.num_experts for b in blocks)
    if not 1.0 <= target_experts <= ceiling:
        raise ValueError(
            f"calibrate_p: target_experts must be in [1, {ceiling}] (top-p keeps at least one "
            f"expert and at most {'max_experts' if max_experts else 'E'}), got {target_experts}"
        )


def _bisect(
    model: nn.Module,
    batches: list[torch.Tensor],
    keys: list[Any],
    target: float,
    set_p: Callable[[dict[Any, float]], None],
    steps: Iterable[int],
    tol: float,
    p_resolution: float,
    per_layer: bool,
) -> tuple[dict[Any, float], list[dict[str, Any]]]:
    """Bisect p per key (a layer, or ``"all"``) together, one forward over ``batches`` per
    step; returns the p closest to the target per key and every trial."""
    lo = dict.fromkeys(keys, 0.0)
    hi = dict.fromkeys(keys, 1.0)
    best: dict[Any, tuple[float, float]] = {}  # key -> (error, p)
    trials: list[dict[str, Any]] = []
    for _ in steps:
        mids = {k: (lo[k] + hi[k]) / 2 for k in keys}
        set_p(mids)
        stats = _measure(model, batches)
        means = {"all": stats["mean_experts"]} if not per_layer else stats["per_layer"]
        trials.append({"p": dict(mids) if per_layer else mids["all"], "mean_experts": means})
        for k in keys:
            err = abs(means[k] - target)
            if k not in best or err < best[k][0]:
                best[k] = (err, mids[k])
            if means[k] < target:  # the mean grows with p
                lo[k] = mids[k]
            else:
                hi[k] = mids[k]
        if all(abs(means[k] - target) <= tol for k in keys):
            break
        if all(hi[k] - lo[k] < p_resolution for k in keys):
            break  # the mean is a step function of p: a finer p changes nothing useful
    return {k: best[k][1] for k in keys}, trials


def calibrate_p(
    model: nn.Module,
    texts: TextInput,
    target_experts: float,
    *,
    tokenizer: Any = None,
    per_layer: bool = False,
    max_experts: int | None = None,
    seq_len: int = 256,
    batch_size: int = 4,
    max_tokens: int | None = 4096,
    iters: int = 20,
    tol: float = 0.02,
    p_resolution: float = 1e-3,
    progress: bool = False,
    **router_kwargs: Any,
) -> Calibration:
    """Bisect p so that top-p routing uses ``target_experts`` experts per token on average.

    Mean experts per token grows with p (a larger p keeps a longer prefix of experts), so
    bisection on (0, 1] converges. With ``per_layer=True`` every MoE layer gets its own p;
    all layers are bisected together (one forward per step), each on its own mean. A
    layer's inputs depend on the p of earlier layers, so the final per-layer means are
    measured again after the last step and reported as they are.

    Args:
        model: a transformers MoE model (adapted or not); left routed with ``"top_p"``.
        texts: a string, strings (needs ``tokenizer``) or token ids (LongTensor).
        target_experts: wanted mean routed experts per token, 1 <= target <= E.
        per_layer: one p per layer instead of one for the model.
        max_experts: optional cap passed to top-p.
        seq_len, batch_size, max_tokens: how the texts are cut and how much is used.
        iters: bisection steps (each one forward over the texts).
        tol: stop once the mean is within ``tol`` of the target.
        p_resolution: stop once every bracket on p is narrower than this.
        **router_kwargs: more top-p arguments (``normalize``).

    Example:
        >>> from transformers import OlmoeConfig, OlmoeForCausalLM
        >>> cfg = OlmoeConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1,
        ...     num_attention_heads=4, intermediate_size=16, num_experts=8, num_experts_per_tok=2)
        >>> cal = calibrate_p(OlmoeForCausalLM(cfg), torch.randint(0, 128, (64,)), 3.0, tol=0.1)
        >>> abs(cal.mean_experts - 3.0) <= 0.1
        True
    """
    ids = as_token_ids(texts, tokenizer)
    batches = list(window_batches(token_windows(ids, seq_len, max_tokens), batch_size))
    if not adapted_blocks(model):
        apply_routing(model, "top_k")
    blocks = adapted_blocks(model)
    _check_target(target_experts, blocks, max_experts)
    keys = [_key(b) for b in blocks] if per_layer else ["all"]
    was_training = model.training
    model.eval()

    def set_p(ps: dict[Any, float]) -> None:
        for key, p in ps.items():
            layers = None if key == "all" else [key]
            apply_routing(
                model, "top_p", p=p, max_experts=max_experts, layers=layers, **router_kwargs
            )

    iterator: Iterable[int] = range(iters)
    if progress:
        from rich.progress import track

        iterator = track(iterator, description="calibrating p", transient=True)
    chosen, steps = _bisect(
        model, batches, keys, target_experts, set_p, iterator, tol, p_resolution, per_layer
    )
    set_p(chosen)
    final = _measure(model, batches)
    model.train(was_training)
    return Calibration(
        p=chosen if per_layer else chosen["all"],
        mean_experts=final["mean_experts"],
        per_layer=final["per_layer"],
        target=float(target_experts),
        steps=steps,
    )
