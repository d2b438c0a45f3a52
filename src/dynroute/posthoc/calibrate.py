"""Bisect a method's knob so that the model runs a target number of experts per token.

Experts per token is monotone in every method's knob (more p, more scale, a lower
threshold: more experts), so bisection converges. Per-layer methods bisect every layer
at once, one forward over the calibration batches per step, each on its own mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from dynroute.posthoc.measure import RoutingCounter, forward_batches
from dynroute.posthoc.methods import Method
from dynroute.posthoc.slots import Slot

__all__ = ["Calibrated", "calibrate"]


@dataclass
class Calibrated:
    """The knob values chosen (one per slot) and the mean experts they gave in calibration."""

    values: list[float]
    mean_experts: float
    per_layer: list[float]
    steps: int


def _apply(method: Method, slots: Sequence[Slot], values: list[float]) -> None:
    for slot, value in zip(slots, values, strict=True):
        method.apply(slot, value)


def calibrate(
    model: nn.Module,
    slots: Sequence[Slot],
    method: Method,
    target: float,
    batches: Sequence[Tensor],
    iters: int = 22,
    tol: float = 0.005,
) -> Calibrated:
    """Set ``method`` on every slot with the knob that gives ``target`` experts per token
    on ``batches`` (input ids [B, T], held-in text); the model is left routed with it.

    Example:
        >>> import torch
        >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
        >>> from dynroute.posthoc.methods import METHODS
        >>> from dynroute.posthoc.slots import moe_slots
        >>> model = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=2,
        ...     n_heads=2, d_ff=16, num_experts=8, router={"name": "top_k", "k": 4}))
        >>> slots = moe_slots(model)
        >>> batches = [torch.randint(0, 32, (4, 16))]
        >>> cal = calibrate(model, slots, METHODS["top_p_norm"], 3.0, batches)
        >>> abs(cal.mean_experts - 3.0) < 0.1
        True
    """
    keys = range(len(slots)) if method.per_layer else [0]
    lo = {i: method.bounds(slots[i].k)[0] for i in keys}
    hi = {i: method.bounds(slots[i].k)[1] for i in keys}
    best: dict[int, tuple[float, float]] = {}
    steps = 0
    for step in range(1, iters + 1):
        steps = step
        mids = {i: (lo[i] + hi[i]) / 2 for i in keys}
        values = [mids[i if method.per_layer else 0] for i in range(len(slots))]
        _apply(method, slots, values)
        counter = RoutingCounter(slots)
        with counter:
            forward_batches(model, batches)
        means = counter.per_layer() if method.per_layer else [counter.mean_experts()]
        for i in keys:
            err = abs(means[i] - target)
            if i not in best or err < best[i][0]:
                best[i] = (err, mids[i])
            if (means[i] < target) == method.increasing:
                lo[i] = mids[i]
            else:
                hi[i] = mids[i]
        if all(abs(means[i] - target) <= tol * target for i in keys):
            break
    values = [best[i if method.per_layer else 0][1] for i in range(len(slots))]
    _apply(method, slots, values)
    counter = RoutingCounter(slots)
    with counter:
        forward_batches(model, batches)
    return Calibrated(values, counter.mean_experts(), counter.per_layer(), steps)
