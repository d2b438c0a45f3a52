"""Experts of different kinds or widths in one layer (e.g. a big and a small FFN)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
from torch import Tensor, nn

from dynroute.layers.experts.base import Experts


class MixedExperts(Experts):
    """Several expert modules as one: global expert ids are their ids concatenated.

    Rows arrive sorted by global expert, so each part's rows are one contiguous slice;
    ``forward`` runs each part on its slice (no padding to a common width).

    Args:
        parts: ``Experts`` of the same ``d_model`` (any kinds, any widths).

    Shapes:
        rows [A, d_model] sorted by expert, offsets int32 [E = Σ parts' E] -> [A, d_model].

    Example:
        >>> import torch
        >>> from dynroute.layers.experts import SwiGLUExperts
        >>> big_small = MixedExperts([SwiGLUExperts(8, 64, 1), SwiGLUExperts(8, 4, 1)])
        >>> big_small.num_experts, big_small.part_of(1)
        (2, (1, 0))
        >>> big_small(torch.randn(3, 8), torch.tensor([1, 3], dtype=torch.int32)).shape
        torch.Size([3, 8])
    """

    stacked = False

    def __init__(self, parts: Sequence[Experts]) -> None:
        if not parts:
            raise ValueError("MixedExperts: needs at least one part")
        widths = {p.d_model for p in parts}
        if len(widths) != 1:
            raise ValueError(f"MixedExperts: parts have different d_model {sorted(widths)}")
        super().__init__(sum(p.num_experts for p in parts), widths.pop())
        self.parts = nn.ModuleList(parts)
        #: global id of each part's first expert
        self.starts = [0, *accumulate(p.num_experts for p in parts)][:-1]

    def part_of(self, e: int) -> tuple[int, int]:
        """(part index, local expert id) of global expert e."""
        i = max(j for j, s in enumerate(self.starts) if s <= e)
        return i, e - self.starts[i]

    def forward(self, rows: Tensor, offsets: Tensor) -> Tensor:
        ends = torch.cat([offsets.new_zeros(1), offsets])
        # row bounds of every part, one host sync
        bounds = ends[[*self.starts, self.num_experts]].tolist()
        outs = []
        for i, part in enumerate(self.parts):
            lo, hi = bounds[i], bounds[i + 1]
            if hi > lo:  # a part with no rows is not run (and gets no gradient)
                s = self.starts[i]
                outs.append(part(rows[lo:hi], offsets[s : s + part.num_experts] - lo))
        return torch.cat(outs) if outs else rows.new_zeros(rows.shape)

    def run_expert(self, rows: Tensor, e: int) -> Tensor:
        i, local = self.part_of(e)
        return self.parts[i].run_expert(rows, local)

    def shard(self, start: int, stop: int) -> MixedExperts:
        pieces = []
        for s, part in zip(self.starts, self.parts, strict=True):
            lo, hi = max(start, s), min(stop, s + part.num_experts)
            if hi > lo:
                pieces.append(part.shard(lo - s, hi - s))
        return MixedExperts(pieces)
