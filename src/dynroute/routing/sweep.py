"""What a router declares for the compute–quality frontier: :class:`SweepSpec`.

A router class lists its sweep families in ``Router.sweeps`` (family name → SweepSpec):
the knob that sets the mean experts per token (k̄) and the knob value aimed at each
target k̄. :data:`dynroute.frontier.SWEEPS` is built from these declarations, so a new
router's sweep lives in the router's own module (the frontier sits above routing and
only reads them).

Example:
    >>> spec = SweepSpec("k", {1.0: 1, 2.0: 2}, per_value={1: {"normalize": False}})
    >>> spec.settings()
    [(1.0, {'k': 1, 'normalize': False}), (2.0, {'k': 2})]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FIXED_K", "SweepSpec"]


@dataclass(frozen=True)
class SweepSpec:
    """How one router family reaches each target k̄.

    Attributes:
        knob: the router parameter that sets k̄ (``k``, ``p``, ``target``, ...).
        values: target k̄ -> knob value. Targets the rule cannot reach are left out.
        fixed: parameters shared by every point of the family (``{"normalize": True}``).
        per_value: knob value -> parameters of that point only (top-1's ``normalize``).
        source: where the values come from (a measurement, the rule itself).
    """

    knob: str
    values: Mapping[float, Any]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    per_value: Mapping[Any, Mapping[str, Any]] = field(default_factory=dict)
    source: str = ""

    def settings(self) -> list[tuple[float, dict[str, Any]]]:
        """(target k̄, router parameters) of every point, in k̄ order."""
        return [
            (float(t), {**self.fixed, self.knob: v, **self.per_value.get(v, {})})
            for t, v in sorted(self.values.items())
        ]


#: The sweep of a fixed-k rule (k̄ = k exactly): it competes with top-k at equal compute.
FIXED_K = SweepSpec("k", {1.0: 1, 2.0: 2, 3.0: 3}, source="exact: k̄ = k")
