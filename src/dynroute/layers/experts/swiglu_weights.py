"""SwiGLU experts over plain tensors: the math of ``SwiGLUExperts`` and of transformers'
stacked experts (views, no copy), in both layouts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dynroute.dispatch.gemm import group_sizes, grouped_linear

if TYPE_CHECKING:
    from dynroute.routing import Routing


#: One [E, ...] tensor, or one tensor per expert (the "per_expert" layout).
ExpertTensors = Tensor | tuple[Tensor, ...]


class ExpertWeights(NamedTuple):
    """SwiGLU expert weights, laid out for ``x @ W``: stacked, or one tensor per expert.

    Attributes:
        gate_up: [E, d_model, 2·d_ff] (or a tuple of E [d_model, 2·d_ff] tensors);
            columns [:d_ff] are the gate, [d_ff:] the up projection.
        down: [E, d_ff, d_model] (or a tuple of E [d_ff, d_model] tensors).
        activation: applied to the gate half (SiLU for SwiGLU).

    A transposed view of transformers' [E, 2·d_ff, d_model] / [E, d_model, d_ff]
    weights is accepted as is (``w.transpose(1, 2)``); nothing is copied.

    Stacked weights feed grouped GEMMs; their gradient is one [E, ...] tensor however
    few experts ran. Per-expert tensors (tuples) give gradients only to the experts
    that received tokens: cheaper backward for small batches (see docs/performance.md).

    Example:
        >>> import torch
        >>> w = ExpertWeights(torch.zeros(4, 8, 32), torch.zeros(4, 16, 8))
        >>> w.num_experts, w.d_model, w.d_ff, w.per_expert
        (4, 8, 16, False)
        >>> ExpertWeights(tuple(w.gate_up), tuple(w.down)).per_expert
        True
    """

    gate_up: ExpertTensors
    down: ExpertTensors
    activation: Callable[[Tensor], Tensor] = F.silu

    @property
    def per_expert(self) -> bool:
        """Whether the weights are one tensor per expert (tuples) rather than stacked."""
        return isinstance(self.gate_up, tuple | list)

    @property
    def num_experts(self) -> int:
        return len(self.gate_up)

    @property
    def d_model(self) -> int:
        return self.gate_up[0].shape[0]

    @property
    def d_ff(self) -> int:
        return self.down[0].shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.gate_up[0].dtype

    def tensors(self) -> tuple[Tensor, ...]:
        """Every weight tensor: (gate_up, down) stacked, all per-expert tensors otherwise.

        Example:
            >>> import torch
            >>> w = ExpertWeights(torch.zeros(4, 8, 32), torch.zeros(4, 16, 8))
            >>> len(w.tensors()), len(ExpertWeights(tuple(w.gate_up), tuple(w.down)).tensors())
            (2, 8)
        """
        if self.per_expert:
            return (*self.gate_up, *self.down)
        return (self.gate_up, self.down)  # type: ignore[return-value]

    def stacked(self) -> ExpertWeights:
        """The same weights as stacked [E, ...] tensors (a copy for per-expert weights).

        Example:
            >>> import torch
            >>> w = ExpertWeights((torch.zeros(8, 32),) * 4, (torch.zeros(16, 8),) * 4)
            >>> w.stacked().gate_up.shape
            torch.Size([4, 8, 32])
        """
        if not self.per_expert:
            return self
        return ExpertWeights(torch.stack(self.gate_up), torch.stack(self.down), self.activation)

    def glu(self, gate_up_out: Tensor) -> Tensor:
        """activation(gate) * up for a [..., 2·d_ff] projection."""
        gate, up = gate_up_out.chunk(2, dim=-1)
        return self.activation(gate) * up

    def ffn(self, x: Tensor, e: int) -> Tensor:
        """Expert e on rows x [n, d_model] -> [n, d_model]."""
        return self.glu(x @ self.gate_up[e]) @ self.down[e]

    run_expert = ffn

    def __call__(self, rows: Tensor, offsets: Tensor) -> Tensor:  # type: ignore[override]
        """SwiGLU under autograd on rows [A, d] sorted by expert -> [A, d].

        Example:
            >>> import torch
            >>> w = ExpertWeights(torch.randn(2, 8, 32), torch.randn(2, 16, 8))
            >>> w(torch.randn(3, 8), torch.tensor([1, 3], dtype=torch.int32)).shape
            torch.Size([3, 8])
        """
        if self.per_expert:
            # experts with no rows never touch their weights, so they get no gradient at all
            chunks = rows.split(group_sizes(offsets))
            parts = [self.ffn(c, e) for e, c in enumerate(chunks) if c.shape[0]]
            return torch.cat(parts) if parts else rows.new_zeros(rows.shape)
        h = self.glu(grouped_linear(rows, self.gate_up, offsets))  # type: ignore[arg-type]
        return grouped_linear(h.contiguous(), self.down, offsets)  # type: ignore[arg-type]

    def fused(self, x: Tensor, routing: Routing, path: str) -> Tensor | None:
        """The fused SwiGLU dispatch for ``grouped``; None where the composed path is taken."""
        from dynroute.layers.experts.swiglu_fused import fused_swiglu  # it imports this module

        return fused_swiglu(x, routing, self, path)
