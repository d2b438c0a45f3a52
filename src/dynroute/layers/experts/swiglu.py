"""SwiGLU experts: stacked [E, ...] parameters, or one parameter pair per expert.

The math lives in ``ExpertWeights`` (``swiglu_weights.py``: SwiGLU over plain tensors,
also used for transformers' checkpoints); this module holds the parameters and
delegates, including the fused fast path (``swiglu_fused.py``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dynroute.layers.experts.base import Experts
from dynroute.layers.experts.registry import register_experts
from dynroute.layers.experts.swiglu_weights import ExpertWeights
from dynroute.routing import Routing

LAYOUTS = ("stacked", "per_expert")


@register_experts("swiglu")
class SwiGLUExperts(Experts):
    """E SwiGLU FFNs: two stacked parameters (grouped GEMMs) or a parameter pair per expert.

    The default expert kind: ``{"name": "swiglu"}`` (``"swiglu:layout=per_expert"``).

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

    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"layout": "per_expert"})

    def __init__(self, d_model: int, d_ff: int, num_experts: int, layout: str = "stacked") -> None:
        super().__init__(num_experts, d_model)
        if layout not in LAYOUTS:
            raise ValueError(f"SwiGLUExperts: unknown layout {layout!r}; choose one of {LAYOUTS}")
        self.d_ff, self.layout = d_ff, layout
        self.stacked = layout == "stacked"
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

    def forward(self, rows: Tensor, offsets: Tensor) -> Tensor:
        return self.weights()(rows, offsets)

    def run_expert(self, rows: Tensor, e: int) -> Tensor:
        return self.weights().ffn(rows, e)

    def fused(self, x: Tensor, routing: Routing, path: str) -> Tensor | None:
        """The fused SwiGLU dispatch (``swiglu_fused.py``); None for the composed path."""
        return self.weights().fused(x, routing, path)

    def shard(self, start: int, stop: int) -> SwiGLUExperts:
        w = self.weights()
        part = SwiGLUExperts(self.d_model, self.d_ff, stop - start, self.layout)
        part = part.to(device=w.gate_up[0].device, dtype=w.dtype)
        with torch.no_grad():  # tuples (per-expert) and stacked tensors slice alike
            mine = ExpertWeights(w.gate_up[start:stop], w.down[start:stop]).tensors()
            for dst, src in zip(part.weights().tensors(), mine, strict=True):
                dst.copy_(src)
        return part

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_ff={self.d_ff}, layout={self.layout}"
