"""Dropless grouped dispatch: permute rows by expert → ``experts(rows, offsets)`` → combine.

The experts own their math (grouped GEMMs over the sorted rows); this module only
gathers the A assigned rows (already sorted by expert), calls the experts once, and
scatter-adds the weighted outputs back to tokens. Experts with a ``fused(x, routing,
path)`` hook (SwiGLU: ``ExpertWeights``, ``SwiGLUExperts``) may run their own op
instead; see ``dynroute/layers/experts/swiglu_fused.py`` for SwiGLU's paths.
"""

from __future__ import annotations

from torch import Tensor

from dynroute.dispatch.combine import combine
from dynroute.dispatch.experts import ExpertsLike, check_dispatch_inputs, empty_output
from dynroute.routing import Routing

__all__ = ["grouped"]


def grouped(x: Tensor, routing: Routing, experts: ExpertsLike, *, path: str = "auto") -> Tensor:
    """Dropless MoE dispatch with grouped GEMMs: no padding, no [N, E, C] buffers.

    Args:
        x: [N, d_model] tokens.
        routing: assignments sorted by expert (any router).
        experts: ``routing.num_experts`` experts: an ``Experts`` module or ``ExpertWeights``.
        path: "auto" (default), "autograd" (the generic composed path), or a path of the
            experts' fused hook (SwiGLU: "grouped_mm", "slices", "per_expert").

    Returns:
        [N, d_model]; tokens with no assignment get zeros.

    Example:
        >>> import torch
        >>> from dynroute.layers.experts import ExpertWeights
        >>> from dynroute.routing import top_p
        >>> w = ExpertWeights(torch.randn(4, 8, 32), torch.randn(4, 16, 8))
        >>> grouped(torch.randn(5, 8), top_p(torch.randn(5, 4), 0.5), w).shape
        torch.Size([5, 8])
    """
    check_dispatch_inputs(x, routing.num_experts, experts, "grouped")
    if routing.num_assignments == 0:
        return empty_output(x, routing.weight, experts)
    fused = getattr(experts, "fused", None)
    if fused is not None:
        y = fused(x, routing, path)
        if y is not None:
            return y
    elif path not in ("auto", "autograd"):
        raise ValueError(
            f"grouped: path {path!r} needs experts with a fused op; "
            f"{type(experts).__name__} has none: use path='auto' or 'autograd'"
        )
    offs = routing.expert_offsets()
    return _composed(x, routing, experts, offs)


def _composed(x: Tensor, routing: Routing, experts: ExpertsLike, offs: Tensor) -> Tensor:
    """Permute → experts → combine in plain torch ops under autograd: any expert kind."""
    rows = x.index_select(0, routing.token)
    return combine(experts(rows, offs), routing.token, routing.weight, x.shape[0])
