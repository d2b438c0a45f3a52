"""SwiGLU experts: stacked [E, ...] parameters, or one parameter pair per expert."""

from __future__ import annotations

import math

import torch
from torch import nn

from dynroute.dispatch import ExpertWeights

LAYOUTS = ("stacked", "per_expert")


class SwiGLUExperts(nn.Module):
    """E SwiGLU FFNs: two stacked parameters (grouped GEMMs) or a parameter pair per expert.

    Args:
        d_model: model width; d_ff: hidden width of each expert; num_experts: E.
        layout: ``"stacked"`` (default): ``gate_up`` [E, d_model, 2·d_ff] and ``down``
            [E, d_ff, d_model] parameters, the layout of grouped-GEMM kernels and of
            transformers' MoE blocks; its weight gradient is one full [E, ...] tensor
            every step. ``"per_expert"``: ``gate_up`` / ``down`` are ParameterLists of E
            [d_model, 2·d_ff] / [d_ff, d_model] parameters; experts that received no
            token get no gradient, which makes training steps with few tokens per
            expert much cheaper on CPU (docs/performance.md).

    Attributes:
        gate_up: Parameter [E, d_model, 2·d_ff] (gate half first), or a ParameterList.
        down: Parameter [E, d_ff, d_model], or a ParameterList.

    Example:
        >>> experts = SwiGLUExperts(8, 16, 4)
        >>> experts.weights().gate_up.shape
        torch.Size([4, 8, 32])
        >>> len(SwiGLUExperts(8, 16, 4, layout="per_expert").weights().gate_up)
        4
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, layout: str = "stacked") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"SwiGLUExperts: unknown layout {layout!r}; choose one of {LAYOUTS}")
        self.d_model, self.d_ff, self.num_experts = d_model, d_ff, num_experts
        self.layout = layout
        self.gate_up: nn.Parameter | nn.ParameterList
        self.down: nn.Parameter | nn.ParameterList
        if layout == "stacked":
            self.gate_up = nn.Parameter(torch.empty(num_experts, d_model, 2 * d_ff))
            self.down = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        else:
            self.gate_up = nn.ParameterList(
                torch.empty(d_model, 2 * d_ff) for _ in range(num_experts)
            )
            self.down = nn.ParameterList(torch.empty(d_ff, d_model) for _ in range(num_experts))
        self.reset_parameters()

    @property
    def dtype(self) -> torch.dtype:
        """The experts' parameter dtype."""
        return self.weights().dtype

    def reset_parameters(self) -> None:
        # Same scale as nn.Linear's default (uniform ±1/sqrt(fan_in)) for each expert;
        # weights are laid out for x @ W, so fan_in is the second-to-last dim in both layouts.
        for t in self.weights().tensors():
            bound = 1 / math.sqrt(t.shape[-2])
            nn.init.uniform_(t, -bound, bound)

    def weights(self) -> ExpertWeights:
        """The parameters as the ExpertWeights every dispatch path takes."""
        if self.layout == "per_expert":
            return ExpertWeights(tuple(self.gate_up), tuple(self.down))
        return ExpertWeights(self.gate_up, self.down)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}, "
            f"layout={self.layout}"
        )
