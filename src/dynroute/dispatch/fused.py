"""Gather → SwiGLU expert GEMMs → weight → scatter as one autograd op with a hand-written backward.

Why a custom ``autograd.Function`` instead of composing torch ops:

- memory: autograd would keep the gathered rows [A, d], the gate/up projection [A, 2f],
  silu(gate) [A, f] and the hidden [A, f]. Here only the projection [A, 2f] and the
  unweighted expert outputs [A, d] are kept; rows are re-gathered from ``x`` and the
  hidden recomputed (elementwise, cheap next to the GEMMs) in backward;
- copies: the combine weight is folded into the scatter (a sparse combine matrix, see
  ``combine.py``), and ``grouped_mm`` never sees a non-contiguous gradient;
- work: gradients nobody asked for (frozen experts, a detached router) are skipped.

Only SwiGLU with SiLU is fused; ``grouped`` composes plain torch ops for any other
activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dynroute.dispatch.combine import Combiner
from dynroute.dispatch.gemm import grouped_linear, grouped_outer


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
        ctx.save_for_backward(x, weight, gate_up, down, token, offs)
        # held outside save_for_backward so that backward can drop and reuse them early
        ctx.gu = gu  # type: ignore[attr-defined]
        ctx.y = y if need_weight_grad else None  # type: ignore[attr-defined]
        ctx.gmm, ctx.combine = gmm, combine  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, weight, gate_up, down, token, offs = ctx.saved_tensors  # type: ignore[attr-defined]
        gu, y = ctx.gu, ctx.y  # type: ignore[attr-defined]
        if gu is None:
            raise RuntimeError(
                "grouped: backward ran twice through one dispatch call; its activations are "
                "reused in place to save memory. Run the forward again (or use path='autograd')."
            )
        ctx.gu = ctx.y = None  # type: ignore[attr-defined]
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
        act = F.silu(gate)  # [A, f], recomputed rather than stored
        d_down = None
        if need_down:
            d_down = grouped_outer(act * up, go, offs, **gmm)  # [E, f, d]
        d_h = grouped_linear(go, down.transpose(1, 2), offs, **gmm)  # [A, f]
        del go
        # the gate/up gradient overwrites gu in place: peak [A, 4f] instead of [A, 6f]
        act.mul_(d_h)  # d_up
        d_h.mul_(up)  # gradient w.r.t. silu(gate)
        up.copy_(act)
        del act
        torch.ops.aten.silu_backward.grad_input(d_h, gate, grad_input=gate)
        del d_h, gate, up
        d_gu = gu
        d_gate_up = d_x = None
        if need_gu:
            d_gate_up = grouped_outer(x.index_select(0, token), d_gu, offs, **gmm)  # [E, d, 2f]
        if need_x:
            d_rows = grouped_linear(d_gu, gate_up.transpose(1, 2), offs, **gmm)  # [A, d]
            del d_gu, gu
            d_x = ctx.combine(d_rows, inplace=True)  # type: ignore[attr-defined]
        return d_x, d_weight, d_gate_up, d_down, None, None, None, None
