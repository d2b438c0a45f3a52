"""Experts of different kinds or widths in one layer (e.g. a big and a small FFN)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dynroute.layers.experts.base import Experts
from dynroute.layers.experts.registry import (
    EXPERT_KINDS,
    ExpertsSpec,
    make_experts,
    register_experts,
)


@register_experts("mixed")
class MixedExperts(Experts):
    """Several expert modules as one: global expert ids are their ids concatenated.

    Rows arrive sorted by global expert, so each part's rows are one contiguous slice;
    ``forward`` runs each part on its slice (no padding to a common width).

    Expert kind ``"mixed"``: in a config, ``experts = {name = "mixed", parts = [...]}``
    with a spec per part, e.g. ``parts = [{name = "swiglu", d_ff = 512, num_experts = 2},
    "swiglu:d_ff=64"]``: a part without ``num_experts`` gets an equal share of the rest
    of the layer's experts; ``d_ff`` is the layer's unless a part sets its own.

    Args:
        parts: ``Experts`` of the same ``d_model`` (any kinds, any widths), or specs of
            registered kinds (built here, in order).
        d_model, d_ff, num_experts: the layer's sizes (filled by ``make_experts``);
            ``d_model`` is needed to build spec parts; ``num_experts``, when given, must
            be the parts' total.

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
        >>> specs = MixedExperts(["swiglu:d_ff=64,num_experts=1", "mlp"], 8, 16, num_experts=4)
        >>> [(type(p).__name__, p.num_experts) for p in specs.parts]
        [('SwiGLUExperts', 1), ('MLPExperts', 3)]
    """

    stacked = False
    examples: ClassVar[tuple[dict[str, Any], ...]] = (
        {"parts": ["swiglu:d_ff=32", "mlp:d_ff=8,activation=relu"]},
        {"parts": [{"name": "swiglu", "num_experts": 2}, "mlp", "swiglu:d_ff=4"]},
    )

    def __init__(
        self,
        parts: Sequence[Experts | ExpertsSpec],
        d_model: int | None = None,
        d_ff: int | None = None,
        num_experts: int | None = None,
    ) -> None:
        if not parts:
            raise ValueError("MixedExperts: needs at least one part")
        parts = build_parts(parts, d_model, d_ff, num_experts)
        total = sum(p.num_experts for p in parts)
        if num_experts is not None and total != num_experts:
            raise ValueError(
                f"MixedExperts: the parts hold {total} experts, the layer has "
                f"num_experts={num_experts}"
            )
        widths = {p.d_model for p in parts} | ({d_model} if d_model is not None else set())
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


def build_parts(
    parts: Sequence[Experts | ExpertsSpec], d_model: int | None, d_ff: int | None,
    num_experts: int | None,
) -> list[Experts]:  # fmt: skip
    """The parts as modules: specs built with the layer's sizes, in order (seeded models
    draw their weights part by part); a spec without ``num_experts`` gets an equal share
    of the experts no other part claims."""
    specs = {i: EXPERT_KINDS.spec(p) for i, p in enumerate(parts) if not isinstance(p, Experts)}
    if not specs:
        return list(parts)  # type: ignore[arg-type]
    if d_model is None:
        raise TypeError("MixedExperts: parts given as specs need d_model")
    claimed = sum(
        p.num_experts if isinstance(p, Experts) else specs[i].get("num_experts", 0)
        for i, p in enumerate(parts)
    )
    open_parts = [i for i, spec in specs.items() if "num_experts" not in spec]
    share = None
    if open_parts and num_experts is None:
        raise TypeError("MixedExperts: parts without num_experts need the layer's num_experts")
    if open_parts:
        rest = num_experts - claimed  # type: ignore[operator]
        if rest <= 0 or rest % len(open_parts):
            raise ValueError(
                f"MixedExperts: {len(open_parts)} part(s) without num_experts cannot share "
                f"the {rest} experts the other parts leave of num_experts={num_experts}; "
                "give each part num_experts (they must add up to the layer's num_experts)"
            )
        share = rest // len(open_parts)
    built = {
        i: make_experts(spec, d_model=d_model, d_ff=d_ff, num_experts=share)
        for i, spec in specs.items()
    }
    return [built.get(i, p) for i, p in enumerate(parts)]  # type: ignore[misc]
