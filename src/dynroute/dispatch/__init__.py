"""Dispatch paths: (x [N, d], routing, experts) -> [N, d]. Same signature, same result.

``grouped`` is the fast path; ``loop`` and ``dense`` are references for tests. Dispatch
permutes and combines; ``experts`` (anything ``ExpertsLike``: a
``dynroute.layers.experts.Experts`` module, or SwiGLU ``ExpertWeights`` over plain
tensors) owns the math, and may bring its own fused op (SwiGLU does).

Example:
    >>> import torch
    >>> from dynroute.layers.experts import ExpertWeights
    >>> from dynroute.routing import top_k
    >>> w = ExpertWeights(torch.randn(4, 8, 32), torch.randn(4, 16, 8))
    >>> x, r = torch.randn(6, 8), top_k(torch.randn(6, 4), 2)
    >>> torch.allclose(grouped(x, r, w), loop(x, r, w), atol=1e-5)
    True
"""

from collections.abc import Callable

from torch import Tensor

from dynroute.dispatch.dense import dense
from dynroute.dispatch.experts import ExpertsLike
from dynroute.dispatch.gemm import grouped_linear, grouped_mm_supported, grouped_outer
from dynroute.dispatch.grouped import grouped
from dynroute.dispatch.loop import loop
from dynroute.routing import Routing

DispatchFn = Callable[[Tensor, Routing, ExpertsLike], Tensor]

DISPATCH: dict[str, DispatchFn] = {"grouped": grouped, "loop": loop, "dense": dense}


def get_dispatch(name: str | DispatchFn) -> DispatchFn:
    """Look up a dispatch path by name ("grouped", "loop" or "dense"); a callable passes.

    Example:
        >>> get_dispatch("loop").__name__
        'loop'
    """
    if callable(name):
        return name
    if name not in DISPATCH:
        raise ValueError(f"unknown dispatch {name!r}; choose one of {', '.join(DISPATCH)}")
    return DISPATCH[name]


__all__ = [
    "DISPATCH",
    "DispatchFn",
    "ExpertsLike",
    "dense",
    "get_dispatch",
    "grouped",
    "grouped_linear",
    "grouped_mm_supported",
    "grouped_outer",
    "loop",
]
