"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math

__all__ = ["lr_at"]


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warmup from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` steps,
    then a half cosine from ``lr`` down to ``min_lr`` at ``total_steps``.

    Example:
        >>> [round(lr_at(s, 1.0, 0.1, 2, 10), 3) for s in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.55, 0.1]
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
