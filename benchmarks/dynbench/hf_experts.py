"""transformers' own MoE expert implementations, run on dynroute's weights and routing.

``transformers.integrations.moe`` registers several ``experts_implementation`` s
("eager", "batched_mm", "grouped_mm", ...) behind one experts module; we build a
``MixtralExperts`` whose parameters share storage with dynroute's ``ExpertWeights``
(no copy: transformers' [E, 2f, d] is the transposed view of our [E, d, 2f]) and call
it with the same routing in transformers' [N, k] format. A variable number of experts
per token (top-p) is padded with the sentinel expert E and weight 0, the convention of
transformers' expert-parallel path.

``mixtral_loop`` is the classic transformers-4.x Mixtral block loop (one ``nn.Linear``
trio per expert, ``one_hot`` + ``where`` + ``index_add_``), on the same storage.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynroute.routing import Routing

HFExpertsFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def to_top_k_format(routing: Routing) -> tuple[Tensor, Tensor]:
    """A Routing as transformers' ``(top_k_index [N, K], top_k_weights [N, K])``.

    K is the largest number of experts any token runs; shorter rows are padded with
    the sentinel expert index E and weight 0.

    Example:
        >>> import torch
        >>> from dynroute.routing import top_p
        >>> idx, w = to_top_k_format(top_p(torch.tensor([[5.0, 0, 0], [0.0, 0, 0]]), 0.5))
        >>> idx.tolist()
        [[0, 3], [0, 1]]
    """
    n, num_experts = routing.num_tokens, routing.num_experts
    counts = routing.experts_per_token()
    k = max(int(counts.max()), 1) if n else 1
    order = torch.argsort(routing.token, stable=True)
    token = routing.token[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(token.numel(), device=token.device) - starts[token]
    index = routing.expert.new_full((n, k), num_experts)
    weight = routing.weight.new_zeros(n, k)
    index[token, slot] = routing.expert[order]
    weight = weight.index_put((token, slot), routing.weight[order])
    return index, weight


def available_implementations() -> list[str]:
    """The experts implementations the installed transformers registers (plus "eager").

    Example:
        >>> "eager" in available_implementations()
        True
    """
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:
        return []
    wanted = ("batched_mm", "grouped_mm")
    return ["eager", *[name for name in wanted if name in ALL_EXPERTS_FUNCTIONS]]


def hf_experts(
    gate_up: Tensor, down: Tensor, implementation: str, padded: bool = False
) -> nn.Module:
    """A transformers ``MixtralExperts`` running ``implementation`` on our weights' storage.

    Args:
        gate_up: [E, d, 2f]; down: [E, f, d] (dynroute layout; shared, not copied).
        implementation: "eager", "batched_mm", "grouped_mm", ...
        padded: routing has sentinel slots (index E); turns on transformers' sentinel handling.

    Returns:
        the module; call it as ``module(x [N, d], top_k_index, top_k_weights) -> [N, d]``.
        Its parameters are fresh leaves (their own ``.grad``) over the same storage.

    Example:
        >>> import torch
        >>> m = hf_experts(torch.randn(2, 8, 32), torch.randn(2, 16, 8), "eager")
        >>> tuple(m.gate_up_proj.shape)
        (2, 32, 8)
    """
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    num_experts, d_model, two_f = gate_up.shape
    config = MixtralConfig(
        hidden_size=d_model,
        intermediate_size=two_f // 2,
        num_local_experts=num_experts,
        hidden_act="silu",
    )
    config._experts_implementation = implementation
    with torch.device("meta"):  # don't allocate weights we are about to replace
        module = MixtralExperts(config)
    module.gate_up_proj = nn.Parameter(gate_up.detach().transpose(1, 2))
    module.down_proj = nn.Parameter(down.detach().transpose(1, 2))
    module._is_expert_parallel = padded
    return module


def mixtral_loop(gate_up: Tensor, down: Tensor) -> tuple[HFExpertsFn, list[Tensor]]:
    """The classic (transformers 4.x) Mixtral sparse-MoE loop over per-expert ``nn.Linear`` s.

    Args:
        gate_up: [E, d, 2f]; down: [E, f, d] (shared storage; each expert's w1/w3/w2 is
            its own leaf, as with 4.x's separate ``nn.Linear`` modules).

    Returns:
        ``(fn(x, top_k_index, top_k_weights) -> [N, d], the per-expert leaves)``.

    Example:
        >>> import torch
        >>> fn, leaves = mixtral_loop(torch.randn(2, 8, 32), torch.randn(2, 16, 8))
        >>> fn(torch.randn(3, 8), torch.tensor([[0], [1], [2]]), torch.ones(3, 1)).shape
        torch.Size([3, 8])
    """
    num_experts, _, two_f = gate_up.shape
    f = two_f // 2
    base_gu, base_down = gate_up.detach(), down.detach()
    w1 = [base_gu[e, :, :f].t().requires_grad_() for e in range(num_experts)]  # [f, d]
    w3 = [base_gu[e, :, f:].t().requires_grad_() for e in range(num_experts)]
    w2 = [base_down[e].t().requires_grad_() for e in range(num_experts)]  # [d, f]

    def forward(x: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        expert_mask = F.one_hot(top_k_index, num_classes=num_experts + 1).permute(2, 1, 0)
        for e in range(num_experts):
            idx, top_x = torch.where(expert_mask[e])
            if top_x.numel() == 0:
                continue
            state = x[top_x]
            h = F.silu(F.linear(state, w1[e])) * F.linear(state, w3[e])
            y = F.linear(h, w2[e]) * top_k_weights[top_x, idx, None]
            out.index_add_(0, top_x, y.to(x.dtype))
        return out

    return forward, [*w1, *w3, *w2]
