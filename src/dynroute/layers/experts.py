"""SwiGLU experts stored as stacked [E, ...] parameters."""

from __future__ import annotations

import math

import torch
from torch import nn

from dynroute.dispatch import ExpertWeights


class SwiGLUExperts(nn.Module):
    """E SwiGLU FFNs in two stacked parameters, ready for grouped GEMMs.

    Args:
        d_model: model width; d_ff: hidden width of each expert; num_experts: E.

    Attributes:
        gate_up: Parameter [E, d_model, 2·d_ff] (gate half first).
        down: Parameter [E, d_ff, d_model].

    Example:
        >>> experts = SwiGLUExperts(8, 16, 4)
        >>> experts.weights().gate_up.shape
        torch.Size([4, 8, 32])
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int) -> None:
        super().__init__()
        self.d_model, self.d_ff, self.num_experts = d_model, d_ff, num_experts
        self.gate_up = nn.Parameter(torch.empty(num_experts, d_model, 2 * d_ff))
        self.down = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same scale as nn.Linear's default (uniform ±1/sqrt(fan_in)) for each expert.
        nn.init.uniform_(self.gate_up, -1 / math.sqrt(self.d_model), 1 / math.sqrt(self.d_model))
        nn.init.uniform_(self.down, -1 / math.sqrt(self.d_ff), 1 / math.sqrt(self.d_ff))

    def weights(self) -> ExpertWeights:
        """The parameters as the ExpertWeights every dispatch path takes."""
        return ExpertWeights(self.gate_up, self.down)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}"
