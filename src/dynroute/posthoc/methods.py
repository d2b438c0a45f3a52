"""The training-free ways to route a trained top-k model with fewer experts, and the knob
of each that :mod:`dynroute.posthoc.calibrate` turns to hit a target experts per token.

Example:
    >>> sorted(METHODS)
    ['entropy', 'threshold', 'top_p', 'top_p_layer', 'top_p_norm']
    >>> METHODS["threshold"].bounds(2)
    (-30.0, 30.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dynroute.posthoc.slots import Slot

__all__ = ["METHODS", "STATIC", "Method", "method_names"]

#: The static baseline's name in results: top-k with a smaller k.
STATIC = "top_k"


@dataclass(frozen=True)
class Method:
    """A router applied post hoc, with one knob calibrated per model (or per layer).

    Attributes:
        name: the method's name in results and on the command line.
        router: the registered router it uses.
        knob: the router field calibrated toward the target.
        increasing: True when more of the knob means more experts per token.
        normalize: renormalise kept weights (None: as the trained model does).
        per_layer: one knob value per MoE layer, each calibrated to the target.
        low, high: the knob's search range; ``high_times_k``: the upper bound is k times
            ``high`` (entropy's scale).
        fixed: more router fields; the string ``"k"`` stands for the layer's own k.
        text: one line for docs and tables.
    """

    name: str
    router: str
    knob: str
    increasing: bool
    text: str
    normalize: bool | None = None
    per_layer: bool = False
    low: float = 0.0
    high: float = 1.0
    high_times_k: bool = False
    fixed: dict[str, Any] = field(default_factory=dict)

    def bounds(self, k: int) -> tuple[float, float]:
        """The knob's search range for a layer of ``k`` experts per token."""
        return self.low, self.high * k if self.high_times_k else self.high

    def apply(self, slot: Slot, value: float) -> None:
        """Route ``slot`` with this method at knob ``value``."""
        fixed = {key: slot.k if v == "k" else v for key, v in self.fixed.items()}
        slot.use(self.router, self.normalize, **fixed, **{self.knob: value})


#: Every training-free method, by name.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("top_p", "top_p", "p", True, "top-p, the paper's form: raw probabilities as weights",
               normalize=False),
        Method("top_p_norm", "top_p", "p", True,
               "top-p with the kept weights renormalised (as the top-k model was trained)",
               normalize=True),
        Method("top_p_layer", "top_p", "p", True,
               "renormalised top-p, one p per layer, every layer at the target", normalize=True,
               per_layer=True),
        Method("threshold", "null_experts", "null_logit", False,
               "keep a top-k expert only if its logit beats a threshold (k null experts at a "
               "constant logit; 0..k experts)", low=-30.0, high=30.0,
               fixed={"k": "k", "num_null": "k"}),
        Method("entropy", "entropy_k", "scale", True,
               "entropy-adaptive k: ceil(scale * exp(H(router probs))) experts",
               high=1.0, high_times_k=True),
    )
}  # fmt: skip


def method_names(text: str) -> list[str]:
    """Comma-separated method names, checked (``top_k`` is the static baseline).

    Example:
        >>> method_names("top_p, threshold")
        ['top_p', 'threshold']
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS and n != STATIC]
    if unknown or not names:
        raise ValueError(
            f"--methods {text!r}: unknown {unknown or 'empty'}; choose from "
            f"{', '.join([STATIC, *METHODS])}"
        )
    return names
