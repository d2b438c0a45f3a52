"""SMoRA ("Each Rank Could be an Expert"): the r rank-1 components of one LoRA as experts.

From the paper: a LoRA ``ΔW = B A`` of rank r is a sum of r rank-1 adapters
``b_i a_iᵀ``; SMoRA treats each as an expert and routes every token to a subset of the
ranks, so the adapter's capacity is shared across tasks at the finest grain.

Not from the paper (our choices): the gate is the same ``nn.Linear`` gate as every
``LoRAMoELinear`` and any dynroute router picks the ranks (the paper's loss-free
balancing bias is not implemented; the router losses of ``dynroute.routing.losses``
apply instead); the scale is ``alpha / r`` over all r ranks, as for the dense LoRA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dynroute.layers.experts.base import Experts
from dynroute.routing import Routing


class SMoRAExperts(Experts):
    """r rank-1 experts of one LoRA: expert i computes ``(x · a_i) b_i · alpha/r``.

    Equivalent to ``LoRAExperts(d_in, d_out, num_experts=r, rank=1)``, but the grouped
    path is one ``[N, d_in] @ [d_in, r]`` GEMM, a mask by the dense routing weights and
    one ``[N, r] @ [r, d_out]`` GEMM (SMoRA's masked formulation): rank-1 grouped GEMMs
    would waste the hardware.

    Args:
        d_in, d_out: widths of the wrapped linear; rank: r (= the number of experts);
        alpha: scale numerator.

    Attributes:
        A: Parameter [r, d_in] (row i = a_i); B: Parameter [r, d_out], zeros at init.

    Shapes:
        rows [A, d_in] sorted by expert, offsets int32 [r] -> [A, d_out];
        ``fused(x [N, d_in], routing, path)`` -> [N, d_out].

    Example:
        >>> from dynroute.routing import top_k
        >>> ex = SMoRAExperts(8, 6, rank=4)
        >>> _ = nn.init.normal_(ex.B)
        >>> x, r = torch.randn(5, 8), top_k(torch.randn(5, 4), 2)
        >>> from dynroute.dispatch import loop
        >>> torch.allclose(ex.fused(x, r, "auto"), loop(x, r, ex), atol=1e-5)
        True
    """

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float = 1.0) -> None:
        if rank < 1:
            raise ValueError(f"SMoRAExperts: rank must be >= 1, got {rank}")
        super().__init__(rank, d_in)
        self.d_out, self.rank, self.alpha = d_out, rank, float(alpha)
        self.scale = self.alpha / rank
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(rank, d_out))
        bound = 1 / math.sqrt(d_in)  # LoRA's A init; B = 0 so the base is unchanged at init
        nn.init.uniform_(self.A, -bound, bound)

    def forward(self, rows: Tensor, offsets: Tensor) -> Tensor:
        # the expert of each row from the offsets; rank-1 work is a row-wise dot product
        row = torch.arange(rows.shape[0], device=rows.device)
        expert = torch.searchsorted(offsets, row.to(offsets.dtype), right=True)
        h = (rows * self.A[expert]).sum(dim=-1, keepdim=True)
        return h * self.B[expert] * self.scale

    def run_expert(self, rows: Tensor, e: int) -> Tensor:
        return (rows @ self.A[e])[:, None] * self.B[e] * self.scale

    def fused(self, x: Tensor, routing: Routing, path: str) -> Tensor | None:
        """All ranks on all tokens, masked by the routing weights: two dense GEMMs."""
        if path not in ("auto", "autograd"):
            return None
        weights = routing.dense_weights().to(x.dtype)  # [N, r], zero off the chosen ranks
        return ((x @ self.A.t()) * weights) @ self.B * self.scale

    def delta_weight(self) -> Tensor:
        """All ranks as a dense ``[d_out, d_in]`` update (every rank with weight 1)."""
        return (self.A.t() @ self.B).t() * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_out={self.d_out}, alpha={self.alpha}"
