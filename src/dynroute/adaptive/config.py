"""`AdaptiveConfig`: a DynMoE config whose FFNs hold a big and a small module (Duo-LLM)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from dynroute.models import DynMoEConfig

__all__ = ["BIG", "ROUTINGS", "SKIP", "SMALL", "AdaptiveConfig"]

#: Module ids per token and layer: the big FFN, the small FFN, or no FFN (residual only).
BIG, SMALL, SKIP = 0, 1, 2

#: How tokens are routed when no pattern is forced.
ROUTINGS = ("random", "router", "big", "small")


class AdaptiveConfig(DynMoEConfig):
    """Configuration of :class:`~dynroute.adaptive.AdaptiveForCausalLM`.

    Every :class:`~dynroute.models.DynMoEConfig` field keeps its meaning (``d_ff`` is the
    width of the *big* module; ``num_experts``, ``router`` and ``moe_every`` are unused:
    every layer holds exactly one big and one small module). Added fields:

    Args:
        small_ratio: the small module is ``small_ratio``× narrower than the big one
            (Duo-LLM: 16): inner width ``max(1, d_ff // small_ratio)``.
        routing: ``"random"`` (training draws big with probability ``p_big``, skip with
            ``p_skip``, small otherwise, per token and layer; evaluation routes every
            token big), ``"router"`` (one linear router per layer, soft routing during
            training, hard argmax in evaluation), ``"big"`` or ``"small"`` (every token).
        p_big, p_skip: the random routing's probabilities.
        skip: the router may also choose "skip" (a third gate column).
        budget_target: the router's target share of big modules (over tokens and layers).
        budget_weight: weight of the global budget loss (mean_l P_l(big) − target)².
        temperature_start, temperature_end: the router's softmax temperature, annealed
            geometrically from start to end over training (soft → nearly hard).
        init_from: a run folder (or model folder) whose weights initialise this model
            (stage 3: routers on top of a random-routing model); ``""`` = none.
        train_routers_only: freeze every weight except the routers.

    Example:
        >>> cfg = AdaptiveConfig(vocab_size=64, d_model=32, d_ff=64, small_ratio=16)
        >>> cfg.model_type, cfg.small_ff, cfg.gate_columns
        ('dynroute_adaptive', 4, 2)
    """

    model_type = "dynroute_adaptive"

    small_ratio: int = 16
    routing: str = "random"
    p_big: float = 0.5
    p_skip: float = 0.0
    skip: bool = False
    budget_target: float = 0.5
    budget_weight: float = 1.0
    temperature_start: float = 1.0
    temperature_end: float = 0.05
    init_from: str = ""
    train_routers_only: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        errors = []
        if self.routing not in ROUTINGS:
            errors.append(f"routing must be one of {list(ROUTINGS)}, got {self.routing!r}")
        if self.small_ratio < 1:
            errors.append(f"small_ratio must be >= 1, got {self.small_ratio}")
        if not (0.0 <= self.p_big <= 1.0 and 0.0 <= self.p_skip <= 1.0 - self.p_big):
            errors.append(
                f"p_big ({self.p_big}) and p_skip ({self.p_skip}) must be probabilities "
                "with p_big + p_skip <= 1"
            )
        if not 0.0 <= self.budget_target <= 1.0:
            errors.append(f"budget_target must be in [0, 1], got {self.budget_target}")
        if not 0.0 < self.temperature_end <= self.temperature_start:
            errors.append(
                "need 0 < temperature_end <= temperature_start, got "
                f"{self.temperature_end} and {self.temperature_start}"
            )
        if self.train_routers_only and not (self.init_from and self.routing == "router"):
            # nothing else learns: routers on a random frozen model, or no routers at all
            errors.append(
                "train_routers_only (--routers-only) trains the routers of a frozen model: it "
                "needs routing 'router' (--routing router) and init_from (--init-from RUN, "
                f"a trained run), got routing {self.routing!r} and init_from "
                f"{self.init_from or 'unset'}"
            )
        if errors:
            raise ValueError("AdaptiveConfig: " + "; ".join(errors))
        super().__post_init__(**kwargs)

    @property
    def small_ff(self) -> int:
        """Inner width of the small module."""
        return max(1, self.d_ff // self.small_ratio)

    @property
    def gate_columns(self) -> int:
        """Router outputs per layer: big, small (and skip when ``skip``)."""
        return 3 if self.skip else 2

    def router_spec(self) -> Any:
        """What ``dynroute eval`` prints as the router: this model's routing, described.

        Example:
            >>> AdaptiveConfig(routing="router", budget_target=0.25).router_spec().describe()
            'adaptive(routing=router, budget_target=0.25, small_ratio=16)'
        """
        parts = [f"routing={self.routing}"]
        if self.routing == "random":
            parts += [f"p_big={self.p_big}"] + ([f"p_skip={self.p_skip}"] if self.p_skip else [])
        if self.routing == "router":
            parts += [f"budget_target={self.budget_target}"] + (["skip=True"] if self.skip else [])
        text = f"adaptive({', '.join([*parts, f'small_ratio={self.small_ratio}'])})"
        return SimpleNamespace(describe=lambda: text)  # what router_text reads

    def temperature_at(self, step: int, total: int) -> float:
        """Router temperature at ``step`` of ``total``: geometric from start to end.

        Example:
            >>> c = AdaptiveConfig(temperature_start=1.0, temperature_end=0.01)
            >>> [round(c.temperature_at(s, 10), 3) for s in (0, 5, 10)]
            [1.0, 0.1, 0.01]
        """
        frac = min(max(step / max(total, 1), 0.0), 1.0)
        return self.temperature_start * (self.temperature_end / self.temperature_start) ** frac
