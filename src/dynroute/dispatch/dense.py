"""Every expert on every token, masked by the combine weights: the simplest reference."""

from __future__ import annotations

from torch import Tensor

from dynroute.dispatch.experts import ExpertsLike, check_dispatch_inputs, output_width
from dynroute.routing import Routing


def dense(x: Tensor, routing: Routing, experts: ExpertsLike) -> Tensor:
    """Run all E experts on all N tokens (``run_expert``), weighted by the dense [N, E] combine.

    Costs E/k̄ times the FLOPs of ``grouped``; a reference for tests and tiny shapes.

    Args:
        x: [N, d_model]; routing: over E experts; experts: an ``Experts`` module or
            ``ExpertWeights``.

    Returns:
        [N, d_model].

    Example:
        >>> import torch
        >>> from dynroute.layers.experts import ExpertWeights
        >>> from dynroute.routing import top_p
        >>> w = ExpertWeights(torch.randn(4, 8, 32), torch.randn(4, 16, 8))
        >>> dense(torch.randn(5, 8), top_p(torch.randn(5, 4), 0.5), w).shape
        torch.Size([5, 8])
    """
    check_dispatch_inputs(x, routing.num_experts, experts, "dense")
    combine = routing.dense_weights().to(x.dtype)  # [N, E]
    out = x.new_zeros(x.shape[0], output_width(experts))  # d_out may differ from d_model
    for e in range(experts.num_experts):
        out = out + combine[:, e, None] * experts.run_expert(x, e)
    return out
