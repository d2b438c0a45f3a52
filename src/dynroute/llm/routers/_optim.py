"""Full-batch Adam for the small learned routers, seeded without touching global RNG."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor


@contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Run a block under a fixed torch seed and restore the caller's RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def fit_tensors(
    router: Any, tensors: dict[str, Tensor], loss: Callable[[], Tensor], weight_decay: float = 0.0
) -> None:
    """Learn ``router.tensors``: set them to ``tensors`` (which require grad), run
    ``router.steps`` full-batch AdamW steps of rate ``router.lr`` on ``loss()`` over them
    (in their order), then keep them detached."""
    router.tensors = tensors
    opt = torch.optim.AdamW(list(tensors.values()), lr=router.lr, weight_decay=weight_decay)
    for _ in range(router.steps):
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
    router.tensors = {k: v.detach() for k, v in tensors.items()}
