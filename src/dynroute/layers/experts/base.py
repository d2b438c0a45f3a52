"""The expert seam: a module that owns its math over rows sorted by expert."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


class Experts(nn.Module):
    """Base class of expert kinds: E experts of width ``d_model``, run on grouped rows.

    A kind implements ``forward`` (the fast path, usually ``grouped_linear`` /
    ``grouped_outer`` from ``dynroute.dispatch.gemm``) and may override ``run_expert``
    (the readable reference of one expert; by default ``forward`` on that expert's rows
    alone). Dispatch permutes the rows, calls the experts and combines; it never knows
    the math. An optional ``fused(x, routing, path) -> [N, d] | None`` method replaces
    permute → forward → combine with a kind's own op (``SwiGLUExperts``).

    Attributes:
        num_experts: E; d_model: width of the rows in; d_out: width of the rows out
            (``d_model`` unless a kind maps to another width, e.g. LoRA experts over a
            q/k/v projection; dispatch sizes its output by it).
        stacked: True when every parameter is [E, ...] (expert e at index e): then
            ``shard`` slices them and expert parallelism gathers them along dim 0.
        examples: spec parameters the registry-driven tests build a registered kind with
            (``d_model``, ``d_ff``, ``num_experts`` are filled by the test); ``({},)``:
            the kind's defaults alone.

    Example:
        >>> class Scaled(Experts):
        ...     def __init__(self):
        ...         super().__init__(num_experts=2, d_model=3)
        ...         self.scale = nn.Parameter(torch.tensor([1.0, 2.0]))
        ...     def forward(self, rows, offsets):
        ...         row = torch.arange(len(rows), device=rows.device)
        ...         expert = torch.searchsorted(offsets, row, right=True)
        ...         return rows * self.scale[expert, None]
        >>> Scaled().run_expert(torch.ones(1, 3), 1)
        tensor([[2., 2., 2.]], grad_fn=<MulBackward0>)
        >>> Scaled().shard(1, 2).scale
        Parameter containing:
        tensor([2.], requires_grad=True)
    """

    stacked: bool = True
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({},)

    def __init__(self, num_experts: int, d_model: int) -> None:
        super().__init__()
        self.num_experts, self.d_model = num_experts, d_model
        self.d_out = d_model

    def forward(self, rows: Tensor, offsets: Tensor) -> Tensor:
        """rows [A, d_model] sorted by expert, offsets int32 [E] cumulative counts -> [A, d_model].

        The default runs ``run_expert`` per expert: correct, not fast.
        """
        if type(self).run_expert is Experts.run_expert:
            raise NotImplementedError(f"{type(self).__name__} must define forward or run_expert")
        ends = offsets.tolist()
        starts = [0, *ends[:-1]]
        parts = [
            self.run_expert(rows[s:t], e)
            for e, (s, t) in enumerate(zip(starts, ends, strict=True))
            if t > s
        ]
        return torch.cat(parts) if parts else rows.new_zeros(rows.shape[0], self.d_out)

    def run_expert(self, rows: Tensor, e: int) -> Tensor:
        """Expert e alone on rows [n, d_model] -> [n, d_model]: the ``loop``/``dense`` reference."""
        if type(self).forward is Experts.forward:
            raise NotImplementedError(f"{type(self).__name__} must define forward or run_expert")
        offsets = torch.full((self.num_experts,), rows.shape[0], dtype=torch.int32)
        offsets[:e] = 0  # every row belongs to expert e
        return self(rows, offsets.to(rows.device))

    def shard(self, start: int, stop: int) -> Experts:
        """A new module holding experts [start, stop) (parameters copied, not shared).

        The default slices every parameter along dim 0, which fits ``stacked`` kinds.
        """
        if not self.stacked:
            raise NotImplementedError(f"{type(self).__name__} must define shard (not stacked)")
        # deepcopy with the parameters pre-mapped to their slices: nothing else is shared
        memo = {
            id(p): nn.Parameter(p.detach()[start:stop].clone(), requires_grad=p.requires_grad)
            for p in self.parameters()
        }
        part = copy.deepcopy(self, memo)
        part.num_experts = stop - start
        return part

    @property
    def dtype(self) -> torch.dtype:
        """The experts' parameter dtype (float32 for a kind without parameters)."""
        return next(self.parameters(), torch.empty(0)).dtype

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, d_model={self.d_model}"
