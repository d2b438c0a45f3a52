"""Training expert compute: how many experts a run activated while it trained.

A router whose experts per token (k̄) changes during training (ReLU routing starts dense
and its L1 term makes it sparse; a schedule anneals k) paid for more (or fewer) expert
FLOPs than its final k̄ says. The training loop adds each step's measured k̄ of every
MoE layer (the mean over the step's tokens, micro-batches and ranks) to a running sum;
the sum is checkpointed, so a resumed run continues it, and it is written to
``metrics.jsonl`` (every logged training row), ``checkpoint.pt`` and the exported
``model/dynroute_run.json``.

Training expert FLOPs = tokens per step × Σ_steps Σ_l k̄_l × 6·d_model·d_ff
= training tokens × Σ_l (mean over steps of k̄_l) × 6·d_model·d_ff, so the mean k̄ over
training is the number to set beside the final k̄: a static top-k of the same k has
both equal.

Example:
    >>> c = TrainingCompute().plus([3.0, 2.0], 2).plus([1.0, 2.0], 1)
    >>> c.steps, c.experts_per_layer, c.mean_experts
    (3, [1.3333333333333333, 1.3333333333333333], 1.3333333333333333)
    >>> TrainingCompute.from_dict(c.to_dict()) == c
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainingCompute"]


@dataclass(frozen=True)
class TrainingCompute:
    """The experts a run activated while training.

    Attributes:
        sums: per MoE layer, Σ over the counted steps of the step's measured k̄
            ("expert steps"; × tokens per step = expert activations of the layer).
        steps: the steps the sums cover: every step of the run, unless it resumed from a
            checkpoint written before this count existed (then the steps since).
    """

    sums: tuple[float, ...] = ()
    steps: int = 0

    def plus(self, sums: Sequence[float], steps: int) -> TrainingCompute:
        """These sums and ``steps`` more steps (an empty ``sums``: none to add)."""
        if not len(sums):
            return self
        mine = self.sums or (0.0,) * len(sums)
        if len(mine) != len(sums):
            raise ValueError(f"{len(sums)} layers' expert sums added to {len(mine)} layers'")
        return TrainingCompute(tuple(a + float(b) for a, b in zip(mine, sums, strict=True)),
                               self.steps + steps)  # fmt: skip

    @property
    def experts_per_layer(self) -> list[float]:
        """Mean over the counted steps of each layer's k̄ (empty: nothing counted)."""
        return [s / self.steps for s in self.sums] if self.steps else []

    @property
    def mean_experts(self) -> float:
        """Mean over layers and counted steps of k̄ (NaN: nothing counted)."""
        per_layer = self.experts_per_layer
        return sum(per_layer) / len(per_layer) if per_layer else math.nan

    def metrics(self) -> dict[str, Any]:
        """The fields a logged training row carries (none before anything is counted).

        Example:
            >>> TrainingCompute((4.0,), 2).metrics()["training_mean_experts_per_token"]
            2.0
        """
        if not self.steps:
            return {}
        return {
            "training_mean_experts_per_token": self.mean_experts,
            "training_experts_per_layer": self.experts_per_layer,
            "training_steps_counted": self.steps,
        }

    def to_dict(self) -> dict[str, Any]:
        """As ``checkpoint.pt`` and ``dynroute_run.json`` keep it (the sums and the means)."""
        return {
            "expert_steps_per_layer": list(self.sums),
            "steps_counted": self.steps,
            **({"mean_experts_per_token": self.mean_experts} if self.steps else {}),
            "experts_per_layer": self.experts_per_layer,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> TrainingCompute:
        """What :meth:`to_dict` wrote; None (an older checkpoint): nothing counted."""
        if not raw:
            return cls()
        return cls(tuple(float(v) for v in raw["expert_steps_per_layer"]),
                   int(raw["steps_counted"]))  # fmt: skip
