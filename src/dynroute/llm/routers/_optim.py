"""Full-batch Adam for the small learned routers, seeded without touching global RNG."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


@contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Run a block under a fixed torch seed and restore the caller's RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def minimise(
    loss: Callable[[], Tensor],
    params: list[Tensor],
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
) -> float:
    """``steps`` Adam steps on ``loss()``; returns the last loss (for tests and logs)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    last = float("nan")
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        opt.step()
        last = float(value.detach())
    return last
