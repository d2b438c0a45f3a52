"""The readable oracle: a Python loop over experts, like transformers' Mixtral block."""

from __future__ import annotations

from torch import Tensor

from dynroute.dispatch.experts import ExpertsLike, check_dispatch_inputs, empty_output, output_width
from dynroute.routing import Routing


def loop(x: Tensor, routing: Routing, experts: ExpertsLike) -> Tensor:
    """Run each expert on the tokens assigned to it, one expert at a time (``run_expert``).

    Args:
        x: [N, d_model] tokens.
        routing: assignments sorted by expert.
        experts: ``routing.num_experts`` experts (an ``Experts`` module or ``ExpertWeights``).

    Returns:
        [N, d_model], Σ over a token's assignments of weight · expert(x).

    Example:
        >>> import torch
        >>> from dynroute.layers.experts import ExpertWeights
        >>> from dynroute.routing import top_k
        >>> w = ExpertWeights(torch.randn(4, 8, 32), torch.randn(4, 16, 8))
        >>> loop(torch.randn(5, 8), top_k(torch.randn(5, 4), 2), w).shape
        torch.Size([5, 8])
    """
    check_dispatch_inputs(x, routing.num_experts, experts, "loop")
    if routing.num_assignments == 0:
        return empty_output(x, routing.weight, experts)
    out = x.new_zeros(x.shape[0], output_width(experts))  # d_out may differ from d_model
    ends = routing.expert_offsets().tolist()  # the reference loop reads sizes on the host
    start = 0
    for e, end in enumerate(ends):
        if end > start:
            token = routing.token[start:end]
            y = experts.run_expert(x[token], e) * routing.weight[start:end, None].to(x.dtype)
            out = out.index_add(0, token, y)
        start = end
    return out
