"""Input validation shared by the routing functions: errors say what was wrong and what to do."""

from __future__ import annotations

import torch
from torch import Tensor


def as_router_logits(logits: Tensor, fn: str, min_experts: int = 1) -> Tensor:
    """Check logits [N, E] and return them in float32.

    Example:
        >>> import torch
        >>> as_router_logits(torch.zeros(2, 4, dtype=torch.bfloat16), "top_k").dtype
        torch.float32
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"{fn}: logits must be a torch.Tensor of shape [N, E], got {type(logits)}")
    if logits.dim() != 2:
        raise ValueError(
            f"{fn}: logits must have shape [N, E], got {tuple(logits.shape)}; "
            "flatten leading dimensions first (logits.reshape(-1, E))"
        )
    if logits.shape[1] < min_experts:
        raise ValueError(
            f"{fn}: need at least {min_experts} expert column(s), got {logits.shape[1]}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"{fn}: logits must be floating point, got {logits.dtype}")
    logits = logits.float()
    if logits.numel():
        check_finite(logits, fn)
    return logits


def check_finite(logits: Tensor, fn: str) -> None:
    """Raise a ValueError naming how many tokens have NaN or inf logits, without a host sync.

    ``bool(isfinite(x).all())`` would stall every layer of every step on a GPU until the
    queue drains. ``torch._assert_async`` checks on the device instead: on CPU it raises at
    once (and only then are the bad tokens counted, for the message); on CUDA a failure is
    a device-side assert reported at the next sync.

    Example:
        >>> import torch
        >>> check_finite(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), "top_k")
        Traceback (most recent call last):
        ...
        ValueError: top_k: router logits contain NaN or inf in 1 of 2 token(s); ...
    """
    message = f"{fn}: router logits contain NaN or inf"
    try:
        torch._assert_async(torch.isfinite(logits).all(), message)
    except RuntimeError as err:
        if message not in str(err):
            raise
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise ValueError(
            f"{message} in {bad} of {logits.shape[0]} token(s); "
            "check the inputs and the learning rate, or add a router z-loss"
        ) from None


def check_int(value: int, name: str, fn: str, low: int, high: int | None = None) -> int:
    """Check an integer argument lies in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{fn}: {name} must be in {bound}, got {value}")
    return value
