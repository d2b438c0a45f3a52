"""SwiGLU experts' own fast path: gather → GEMMs → weight → scatter as one autograd op.

``ExpertWeights.fused`` (``swiglu_weights.py``, and so ``SwiGLUExperts``) chooses a path
and hands ``grouped`` this op instead of the generic permute → experts → combine. This
module works on plain tensors and imports nothing of the weights' module. Why a custom
``autograd.Function``:

- memory: autograd would keep the gathered rows [A, d], the gate/up projection [A, 2f],
  silu(gate) [A, f] and the hidden [A, f]. Here only the projection [A, 2f] (and the
  unweighted expert outputs [A, d] when the router needs a gradient) are saved; rows are
  re-gathered from ``x`` and the hidden recomputed (elementwise, cheap next to the GEMMs)
  in backward;
- copies: the combine weight is folded into the scatter (a sparse combine matrix, see
  ``combine.py``), and ``grouped_mm`` never sees a non-contiguous gradient;
- work: gradients nobody asked for (frozen experts, a detached router) are skipped.

Everything backward reads goes through ``save_for_backward``, so activation
checkpointing, ``saved_tensors_hooks`` (CPU offload) and ``retain_graph=True`` work;
backward therefore never writes into a saved tensor.

Execution paths of ``grouped(..., path=...)`` for SwiGLU (all exact, all agree with ``loop``):

- ``"grouped_mm"``: this op on ``torch.nn.functional.grouped_mm``; the default for
  SwiGLU with SiLU when ``grouped_mm`` takes the operands;
- ``"slices"``: the same op, one ``torch.mm`` per contiguous expert slice; taken when
  ``grouped_mm`` cannot take the operands (float64, unaligned strides, old torch);
- ``"autograd"``: the generic composed path (plain torch ops); any other activation;
- ``"per_expert"``: weights given as one tensor per expert (``ExpertWeights`` of
  tuples): the composed path, one GEMM chain per expert that received tokens, so only
  those experts get a gradient. Taken whenever the weights are per-expert.

``"auto"`` also sends forward-only calls (no gradient needed) with at most
``SMALL_FORWARD`` assignments, i.e. decoding a few tokens, to ``"autograd"``: same
GEMMs, less fixed cost per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynroute.dispatch.combine import Combiner
from dynroute.dispatch.gemm import grouped_linear, grouped_outer

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


class FusedSwiGLUDispatch(torch.autograd.Function):
    """out[t] = Σ_{a: token[a]=t} weight[a] · (silu(g)·u) @ down[e_a], [g, u] = x[t] @ gate_up[e_a].

    Inputs: x [N, d], weight [A], gate_up [E, d, 2f], down [E, f, d], token [A] sorted by
    expert, offs int32 [E] cumulative counts, counts (host list or None), use_grouped_mm.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor,
        gate_up: Tensor,
        down: Tensor,
        token: Tensor,
        offs: Tensor,
        counts: list[int] | None,
        use_grouped_mm: bool,
    ) -> Tensor:
        gmm = {"counts": counts, "use_grouped_mm": use_grouped_mm}
        rows = x.index_select(0, token)
        gu = grouped_linear(rows, gate_up, offs, **gmm)  # [A, 2f]
        del rows
        f = gu.shape[1] // 2
        h = F.silu(gu[:, :f]).mul_(gu[:, f:])  # [A, f]
        y = grouped_linear(h, down, offs, **gmm)  # [A, d]
        del h
        need_weight_grad = ctx.needs_input_grad[1]  # type: ignore[attr-defined]
        combine = Combiner(token, x.shape[0])
        # the router's gradient needs the unweighted y; otherwise it may be scaled in place
        out = combine(y, weight, inplace=not need_weight_grad)
        ctx.save_for_backward(
            x,
            weight,
            gate_up,
            down,
            token,
            offs,
            gu,
            y if need_weight_grad else None,
            *combine.index_tensors(),  # the token sort, so backward does not sort again
        )
        ctx.gmm = gmm  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, weight, gate_up, down, token, offs, gu, y, *index = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_w, need_gu, need_down = ctx.needs_input_grad[:4]  # type: ignore[attr-defined]
        gmm = ctx.gmm  # type: ignore[attr-defined]
        go = grad_out.index_select(0, token)  # [A, d], contiguous whatever grad_out was
        d_weight = None
        if need_w:
            d_weight = (go * y).sum(-1, dtype=torch.float32).to(weight.dtype)
        del y
        go.mul_(weight.to(go.dtype)[:, None])
        if not (need_x or need_gu or need_down):
            return None, d_weight, None, None, None, None, None, None
        f = gu.shape[1] // 2
        gate, up = gu[:, :f], gu[:, f:]
        # gu is saved (a second backward or a checkpoint may read it again): the gradient
        # goes to a new [A, 2f] buffer; silu(gate) is recomputed into its up half
        d_gu = torch.empty_like(gu)
        d_gate, d_up = d_gu[:, :f], d_gu[:, f:]
        # out= into a strided view saves an [A, f] temporary in eager; torch.compile cannot
        # trace a non-contiguous out= (and fuses the copy away anyway)
        compiling = torch.compiler.is_compiling()
        act = d_up.copy_(F.silu(gate)) if compiling else torch.ops.aten.silu.out(gate, out=d_up)
        d_down = None
        if need_down:
            d_down = grouped_outer(act * up, go, offs, **gmm)  # [E, f, d]
        d_h = grouped_linear(go, down.transpose(1, 2), offs, **gmm)  # [A, f]
        del go
        act.mul_(d_h)  # d_up, in place in d_gu
        d_h.mul_(up)  # gradient w.r.t. silu(gate)
        if compiling:
            d_gate.copy_(torch.ops.aten.silu_backward(d_h, gate))
        else:
            torch.ops.aten.silu_backward.grad_input(d_h, gate, grad_input=d_gate)
        del d_h, act, gate, up
        d_gate_up = d_x = None
        if need_gu:
            d_gate_up = grouped_outer(x.index_select(0, token), d_gu, offs, **gmm)  # [E, d, 2f]
        if need_x:
            d_rows = grouped_linear(d_gu, gate_up.transpose(1, 2), offs, **gmm)  # [A, d]
            del d_gu
            d_x = Combiner(token, x.shape[0], tuple(index))(d_rows, inplace=True)
        return d_x, d_weight, d_gate_up, d_down, None, None, None, None
