"""The weights a dispatch path multiplies by: stacked SwiGLU experts."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor


class ExpertWeights(NamedTuple):
    """Stacked SwiGLU expert weights, laid out for ``x @ W``.

    Attributes:
        gate_up: [E, d_model, 2·d_ff]; columns [:d_ff] are the gate, [d_ff:] the up projection.
        down: [E, d_ff, d_model].
        activation: applied to the gate half (SiLU for SwiGLU).

    A transposed view of transformers' [E, 2·d_ff, d_model] / [E, d_model, d_ff]
    weights is accepted as is (``w.transpose(1, 2)``); nothing is copied.

    Example:
        >>> import torch
        >>> w = ExpertWeights(torch.zeros(4, 8, 32), torch.zeros(4, 16, 8))
        >>> w.num_experts, w.d_model, w.d_ff
        (4, 8, 16)
    """

    gate_up: Tensor
    down: Tensor
    activation: Callable[[Tensor], Tensor] = F.silu

    @property
    def num_experts(self) -> int:
        return self.gate_up.shape[0]

    @property
    def d_model(self) -> int:
        return self.gate_up.shape[1]

    @property
    def d_ff(self) -> int:
        return self.down.shape[1]

    def glu(self, gate_up_out: Tensor) -> Tensor:
        """activation(gate) * up for a [..., 2·d_ff] projection."""
        gate, up = gate_up_out.chunk(2, dim=-1)
        return self.activation(gate) * up

    def ffn(self, x: Tensor, e: int) -> Tensor:
        """Expert e on rows x [n, d_model] -> [n, d_model]."""
        return self.glu(x @ self.gate_up[e]) @ self.down[e]


def check_dispatch_inputs(x: Tensor, num_experts: int, weights: ExpertWeights, fn: str) -> None:
    """Raise a clear error when x, the routing and the weights do not fit together."""
    if x.dim() != 2:
        raise ValueError(f"{fn}: x must have shape [N, d_model], got {tuple(x.shape)}")
    if x.shape[1] != weights.d_model:
        raise ValueError(f"{fn}: x has d_model={x.shape[1]} but experts expect {weights.d_model}")
    if num_experts != weights.num_experts:
        raise ValueError(
            f"{fn}: routing is over {num_experts} experts but weights hold {weights.num_experts}"
        )


def empty_output(x: Tensor, routing_weight: Tensor, weights: ExpertWeights) -> Tensor:
    """Zeros [N, d_model] for a call with no assignments, still attached to the graph.

    Keeps ``loss.backward()`` working (with zero gradients) on a batch that ran no expert.
    """
    tied = weights.gate_up.sum() + weights.down.sum() + routing_weight.sum()
    return x.new_zeros(x.shape) + 0.0 * (x.sum() + tied).to(x.dtype)
