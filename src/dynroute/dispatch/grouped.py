"""Dropless grouped dispatch: gather by expert, grouped GEMMs, weight, scatter-add.

Execution paths (all exact, all agree with ``loop``; ``grouped`` picks one per call):

- ``"grouped_mm"``: :class:`FusedSwiGLUDispatch` on ``torch.nn.functional.grouped_mm``;
  the default for SwiGLU with SiLU when ``grouped_mm`` takes the operands;
- ``"slices"``: the same fused op, one ``torch.mm`` per contiguous expert slice; taken
  when ``grouped_mm`` cannot take the operands (float64, unaligned strides, old torch);
- ``"autograd"``: plain torch ops under autograd; taken for any other activation;
- ``"per_expert"``: weights given as one tensor per expert (``ExpertWeights`` of
  tuples): one GEMM chain per expert that received tokens, under autograd, so only
  those experts get a gradient. Taken whenever the weights are per-expert.

``"auto"`` also sends forward-only calls (no gradient needed) with at most
``SMALL_FORWARD`` assignments, i.e. decoding a few tokens, to ``"autograd"``: same
GEMMs, less fixed cost per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynroute.dispatch.experts import ExpertWeights, check_dispatch_inputs, empty_output
from dynroute.dispatch.fused import FusedSwiGLUDispatch
from dynroute.dispatch.gemm import group_sizes, grouped_linear, grouped_mm_supported
from dynroute.routing import Routing

PATHS = ("auto", "grouped_mm", "slices", "autograd", "per_expert")
#: Forward-only calls with at most this many assignments take the "autograd" path.
SMALL_FORWARD = 64


def is_silu(activation: object) -> bool:
    """Whether ``activation`` is SiLU (the function or the module), which the fused op implements.

    Example:
        >>> import torch.nn.functional as F
        >>> is_silu(F.silu), is_silu(F.gelu)
        (True, False)
    """
    return activation is F.silu or isinstance(activation, nn.SiLU)


def choose_path(x: Tensor, experts: ExpertWeights) -> str:
    """The execution path ``grouped(..., path="auto")`` takes for these operands.

    Example:
        >>> import torch
        >>> w = ExpertWeights(torch.randn(4, 8, 32), torch.randn(4, 16, 8))
        >>> choose_path(torch.randn(5, 8), w), choose_path(torch.randn(5, 8).double(), w)
        ('grouped_mm', 'slices')
        >>> choose_path(torch.randn(5, 8), ExpertWeights(tuple(w.gate_up), tuple(w.down)))
        'per_expert'
    """
    if experts.per_expert:
        return "per_expert"
    if not is_silu(experts.activation):
        return "autograd"
    gu_t, down_t = experts.gate_up.transpose(1, 2), experts.down.transpose(1, 2)
    # the [A, d] and [A, f] activations are operands too: their row strides must align
    row_bytes = (experts.d_model * x.element_size(), experts.d_ff * x.element_size())
    aligned = all(b % 16 == 0 for b in row_bytes)
    if aligned and grouped_mm_supported(x, experts.gate_up, experts.down, gu_t, down_t):
        return "grouped_mm"
    return "slices"


def grouped(x: Tensor, routing: Routing, experts: ExpertWeights, *, path: str = "auto") -> Tensor:
    """Dropless MoE dispatch with grouped GEMMs: no padding, no [N, E, C] buffers.

    Gathers the A = N·k̄ assigned rows (already sorted by expert), runs the gate/up
    and down projections as grouped GEMMs over the per-expert groups, scales by the
    combine weights and scatter-adds back to tokens. Activation memory is O(A · d_ff)
    and the backward re-gathers rows instead of storing them.

    Args:
        x: [N, d_model] tokens.
        routing: assignments sorted by expert (any router).
        experts: weights of ``routing.num_experts`` experts, stacked or per expert.
        path: "auto" (default) or one of "grouped_mm", "slices", "autograd", "per_expert"
            (see module doc).

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
    if path not in PATHS:
        raise ValueError(f"grouped: unknown path {path!r}; choose one of {', '.join(PATHS)}")
    if routing.num_assignments == 0:
        return empty_output(x, routing.weight, experts)
    if path == "auto":
        path = choose_path(x, experts)
        if path != "per_expert" and routing.num_assignments <= SMALL_FORWARD:
            # a decoding-size call: the fused op's fixed cost (sparse combine, autograd
            # bookkeeping) is a visible share of a few rows' GEMMs; nothing to save for backward
            inputs = (x, routing.weight, experts.gate_up, experts.down)
            if not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):
                path = "autograd"
    elif (path == "per_expert") != experts.per_expert:
        raise ValueError(
            f"grouped: path {path!r} does not fit "
            f"{'per-expert' if experts.per_expert else 'stacked'} weights; "
            "'per_expert' is the path for per-expert weights; use path='auto'"
        )
    elif path not in ("autograd", "per_expert") and not is_silu(experts.activation):
        raise ValueError(f"grouped: path {path!r} is fused SwiGLU with SiLU; use path='autograd'")
    elif path == "grouped_mm" and choose_path(x, experts) != "grouped_mm":
        raise ValueError(
            "grouped: grouped_mm cannot take these operands (needs float32/bf16/fp16 and "
            "16-byte aligned strides); use path='slices' or 'auto'"
        )
    offs = routing.expert_counts().cumsum(0).to(torch.int32)
    if path in ("autograd", "per_expert"):
        return _composed(x, routing, experts, offs)
    use_gmm = path == "grouped_mm"
    return FusedSwiGLUDispatch.apply(
        x, routing.weight, experts.gate_up, experts.down, routing.token, offs, None, use_gmm
    )


def _composed(x: Tensor, routing: Routing, experts: ExpertWeights, offs: Tensor) -> Tensor:
    """Plain torch ops under autograd: any activation, any dtype, either weight layout."""
    rows = x.index_select(0, routing.token)
    if experts.per_expert:
        # experts with no rows never touch their weights, so they get no gradient at all
        chunks = rows.split(group_sizes(offs))
        y = torch.cat([experts.ffn(c, e) for e, c in enumerate(chunks) if c.shape[0]])
    else:
        h = experts.glu(grouped_linear(rows, experts.gate_up, offs))
        y = grouped_linear(h.contiguous(), experts.down, offs)
    y = y * routing.weight[:, None].to(y.dtype)
    return x.new_zeros(x.shape).index_add_(0, routing.token, y)
