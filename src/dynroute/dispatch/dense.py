"""Every expert on every token, masked by the combine weights: the simplest reference."""

from __future__ import annotations

import torch
from torch import Tensor

from dynroute.dispatch.experts import ExpertWeights, check_dispatch_inputs
from dynroute.routing import Routing


def dense(x: Tensor, routing: Routing, experts: ExpertWeights) -> Tensor:
    """Compute all E experts for all N tokens, then weight by the dense [N, E] combine matrix.

    Costs E/k̄ times the FLOPs of ``grouped``; a reference for tests and tiny shapes.

    Args:
        x: [N, d_model]; routing: over E experts; experts: stacked weights.

    Returns:
        [N, d_model].

    Example:
        >>> import torch
        >>> from dynroute.routing import top_p
        >>> w = ExpertWeights(torch.randn(4, 8, 32), torch.randn(4, 16, 8))
        >>> dense(torch.randn(5, 8), top_p(torch.randn(5, 4), 0.5), w).shape
        torch.Size([5, 8])
    """
    check_dispatch_inputs(x, routing.num_experts, experts, "dense")
    experts = experts.stacked()  # a reference: copying per-expert weights is fine here
    h = experts.glu(torch.einsum("nd,edf->enf", x, experts.gate_up))
    y = torch.bmm(h, experts.down)  # [E, N, d]
    combine = routing.dense_weights().to(x.dtype)  # [N, E]
    return torch.einsum("end,ne->nd", y, combine)
