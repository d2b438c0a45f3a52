"""LoRA experts: E low-rank adapters ``x @ A[e] @ B[e] · alpha/r``, an expert kind.

The MoLE formulation: each expert is one LoRA adapter over the same frozen linear; a
router picks adapters per token and dispatch combines their outputs. The math is two
grouped GEMMs over rows sorted by expert (ScatterMoE's "LoRA experts are the same op
with a different activation"), so CPU and GPU take the same paths as the FFN experts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dynroute.dispatch.gemm import grouped_linear
from dynroute.layers.experts.base import Experts


class LoRAExperts(Experts):
    """E LoRA adapters of rank r mapping d_in → d_out, stacked ``[E, ...]``.

    Args:
        d_in: input width (the wrapped linear's ``in_features``).
        d_out: output width (its ``out_features``; may differ from ``d_in``).
        num_experts: E; rank: r; alpha: the LoRA scale numerator (scale = alpha / r).

    Attributes:
        A: Parameter [E, d_in, r], Kaiming-uniform as in LoRA/peft.
        B: Parameter [E, r, d_out], zeros: at initialisation every adapter adds exactly 0.
        scale: alpha / r.

    Shapes:
        rows [A, d_in] sorted by expert, offsets int32 [E] -> [A, d_out].

    Example:
        >>> experts = LoRAExperts(8, 12, num_experts=3, rank=2)
        >>> out = experts(torch.randn(5, 8), torch.tensor([2, 2, 5], dtype=torch.int32))
        >>> out.shape, bool(out.abs().max() == 0)   # B = 0 at init
        (torch.Size([5, 12]), True)
    """

    def __init__(
        self, d_in: int, d_out: int, num_experts: int, rank: int, alpha: float = 1.0
    ) -> None:
        if rank < 1 or num_experts < 1:
            raise ValueError(
                f"LoRAExperts: rank and num_experts must be >= 1, got {rank}, {num_experts}"
            )
        super().__init__(num_experts, d_in)
        self.d_out, self.rank, self.alpha = d_out, rank, float(alpha)
        self.scale = self.alpha / rank
        self.A = nn.Parameter(torch.empty(num_experts, d_in, rank))
        self.B = nn.Parameter(torch.zeros(num_experts, rank, d_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # peft's default: A ~ kaiming_uniform(a=sqrt(5)) on the [r, d_in] matrix, i.e.
        # uniform ±1/sqrt(d_in); B = 0 so the adapted model starts as the base model.
        bound = 1 / math.sqrt(self.d_model)
        nn.init.uniform_(self.A, -bound, bound)
        nn.init.zeros_(self.B)

    def forward(self, rows: Tensor, offsets: Tensor) -> Tensor:
        h = grouped_linear(rows, self.A, offsets)  # [A, r]
        return grouped_linear(h.contiguous(), self.B, offsets) * self.scale

    def run_expert(self, rows: Tensor, e: int) -> Tensor:
        return rows @ self.A[e] @ self.B[e] * self.scale

    def delta_weight(self, e: int) -> Tensor:
        """Adapter e as a dense ``[d_out, d_in]`` update of an ``nn.Linear`` weight.

        Example:
            >>> LoRAExperts(4, 6, 2, rank=2).delta_weight(1).shape
            torch.Size([6, 4])
        """
        return (self.A[e] @ self.B[e]).t() * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_out={self.d_out}, rank={self.rank}, alpha={self.alpha}"
