"""Dropless grouped dispatch: gather by expert, one grouped GEMM per projection, scatter-add."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dynroute.dispatch.experts import ExpertWeights, check_dispatch_inputs, empty_output
from dynroute.routing import Routing

_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def grouped_mm_supported(x: Tensor, *weights: Tensor) -> bool:
    """Whether ``torch.nn.functional.grouped_mm`` accepts these operands.

    It needs float32/bf16/fp16 and 16-byte aligned strides on every operand.

    Example:
        >>> import torch
        >>> grouped_mm_supported(torch.zeros(2, 8), torch.zeros(3, 8, 8))
        True
        >>> grouped_mm_supported(torch.zeros(2, 6), torch.zeros(3, 6, 6))
        False
    """
    for t in (x, *weights):
        if t.dtype not in _GROUPED_MM_DTYPES or t.dtype != x.dtype:
            return False
        if any((s * t.element_size()) % 16 for s in t.stride()[:-1] if s != 1):
            return False
        if t.stride()[-1] != 1 and t.stride()[-2] != 1:
            return False
    return True


def grouped_linear(x: Tensor, w: Tensor, offs: Tensor, counts: list[int] | None = None) -> Tensor:
    """Rows x[offs[e-1]:offs[e]] @ w[e] for every expert e, as one grouped GEMM.

    Falls back to a loop over contiguous slices when grouped_mm cannot take the
    operands (e.g. float64 or unaligned sizes).

    Args:
        x: [A, k] rows sorted by expert; w: [E, k, n]; offs: int32 [E] cumulative counts.

    Returns:
        [A, n].

    Example:
        >>> import torch
        >>> x, w = torch.ones(3, 8), torch.ones(2, 8, 4)
        >>> grouped_linear(x, w, torch.tensor([1, 3], dtype=torch.int32)).shape
        torch.Size([3, 4])
    """
    if grouped_mm_supported(x, w):
        return F.grouped_mm(x, w, offs=offs)
    sizes = counts if counts is not None else torch.diff(offs, prepend=offs.new_zeros(1)).tolist()
    parts = [chunk @ w[e] for e, chunk in enumerate(x.split(sizes)) if chunk.shape[0]]
    return torch.cat(parts) if parts else x.new_zeros(0, w.shape[-1])


def grouped(x: Tensor, routing: Routing, experts: ExpertWeights) -> Tensor:
    """Dropless MoE dispatch with grouped GEMMs: no padding, no [N, E, C] buffers.

    Gathers the A = N·k̄ assigned rows (already sorted by expert), runs the
    gate/up and down projections as grouped GEMMs over the per-expert groups,
    scales by the combine weights and scatter-adds back to tokens. Memory is
    O(A · d_ff).

    Args:
        x: [N, d_model] tokens.
        routing: assignments sorted by expert (any router).
        experts: stacked weights for ``routing.num_experts`` experts.

    Returns:
        [N, d_model]; tokens with no assignment get zeros.

    Example:
        >>> import torch
        >>> from dynroute.routing import top_p
        >>> w = ExpertWeights(torch.randn(4, 8, 32), torch.randn(4, 16, 8))
        >>> grouped(torch.randn(5, 8), top_p(torch.randn(5, 4), 0.5), w).shape
        torch.Size([5, 8])
    """
    check_dispatch_inputs(x, routing.num_experts, experts, "grouped")
    if routing.num_assignments == 0:
        return empty_output(x, routing.weight, experts)
    out = x.new_zeros(x.shape)
    offs = routing.expert_counts().cumsum(0).to(torch.int32)
    rows = x[routing.token]
    h = experts.glu(grouped_linear(rows, experts.gate_up, offs))
    y = grouped_linear(h.contiguous(), experts.down, offs)
    y = y * routing.weight[:, None].to(y.dtype)
    return out.index_add(0, routing.token, y)
