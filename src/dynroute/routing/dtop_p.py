"""Sparsity-controlled top-p (DTop-p): a PI controller steers p so that k̄ tracks a target.

"Sparsity-Controllable Dynamic Top-p MoE for Large Foundation Model Pre-training" (DTop-p;
Jin, Peng, Xiang et al., 2025; REFERENCES.md "More MoE routers"): top-p routing whose
threshold p is not a hand-set constant but is adjusted during training by a
proportional-integral controller so that the running mean number of experts per token,
k̄, tracks a target; a layer-wise routing normalisation lets layers use different k̄
under one global threshold. We implement that normalisation as one learned scalar scale
on each layer's logits.

The rule, exactly (one controller per router configuration, shared by all its layers):

- layer ℓ: ``P = softmax(s_ℓ · z)`` with ``s_ℓ`` a learned scalar (init 1); keep the
  shortest prefix of experts (by P) whose mass exceeds p (the crossing expert is kept, as
  :func:`~dynroute.routing.top_p.top_p_mask`), capped at ``max_experts``; weights are the
  kept P (renormalised over the kept experts when ``normalize``).
- after optimizer step t, with ``k̄_t`` the experts per token of that step pooled over the
  layers (and micro-batches), error ``e_t = target − k̄_t`` (in experts):
  ``p_t = clip(p_{t−1} + K_p·(e_t − e_{t−1}) + K_i·e_t, p_min, 1)`` (the velocity form of
  a PI controller; clipping p is the anti-windup). Our gains: ``K_p = 0.05``,
  ``K_i = 0.02`` per expert of error, ``p_min = 0.01``; p starts at ``p_init`` (default
  ``(target − 0.5) / E``, what a flat router needs for k̄ ≈ target).
- in evaluation p and the scales are frozen; nothing is measured.

Our choices (the paper's code was not available to us): the gains above, the velocity
form, pooling the statistic over layers, a scalar logit scale as the layer-wise
normalisation. Only the threshold is controlled; no auxiliary
loss is added beyond the layer's usual ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from dynroute.routing.checks import as_router_logits, check_int
from dynroute.routing.context import RouteContext
from dynroute.routing.registry import Router, register_router
from dynroute.routing.sweep import SweepSpec
from dynroute.routing.top_p import top_p_mask
from dynroute.routing.types import Routing

__all__ = ["DTopP", "DTopPState"]


class DTopPState(nn.Module):
    """One layer's DTop-p state: the learned logit scale and the controller's buffers.

    Attributes:
        scale: Parameter [], the layer's logit scale s_ℓ (init 1).
        p: buffer [], the current threshold (the same in every layer of one router).
        error: buffer [], the controller's last error e_{t−1}.
        assignments, tokens: buffers [], experts and tokens counted since the last step.
        k_running: buffer [], exponential mean (0.9) of the measured k̄, for reports.
    """

    def __init__(self, p_init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("p", torch.tensor(float(p_init)))
        self.register_buffer("error", torch.zeros(()))
        # integer counts: they stay exact when the model is cast to bf16
        self.register_buffer("assignments", torch.zeros((), dtype=torch.long))
        self.register_buffer("tokens", torch.zeros((), dtype=torch.long))
        self.register_buffer("k_running", torch.full((), float("nan")))


@register_router("dtop_p")
@dataclass(frozen=True)
class DTopP(Router):
    """Top-p whose p a PI controller moves so the mean experts per token tracks ``target``.

    Knobs: ``target`` (k̄ to hold, in [1, E]); ``p_init`` (None: ``(target − 0.5)/E``);
    ``kp``, ``ki`` (controller gains per expert of error); ``p_min``; ``max_experts``;
    ``normalize``. See the module docstring for the exact rule.

    Example:
        >>> from dynroute.routing import make_router
        >>> router = make_router("dtop_p:target=1.5")
        >>> state = router.make_state(num_experts=4, d_model=8)
        >>> round(float(state.p), 3)
        0.25
        >>> router.route(torch.zeros(3, 4), state).experts_per_token().tolist()
        [2, 2, 2]
    """

    examples: ClassVar[tuple[str, ...]] = ("dtop_p:target=1.5",)
    sweeps: ClassVar[Mapping[str, SweepSpec]] = {
        # its PI controller holds k̄ at `target`
        "dtop_p": SweepSpec(
            "target", {1.0: 1.0, 1.5: 1.5, 2.0: 2.0, 3.0: 3.0}, source="controller"
        ),
    }
    host_syncs: ClassVar[int | None] = 1  # the nonzero of the mask

    target: float
    p_init: float | None = None
    kp: float = 0.05
    ki: float = 0.02
    p_min: float = 0.01
    max_experts: int | None = None
    normalize: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.target, bool) or not isinstance(self.target, int | float):
            raise TypeError(f"dtop_p: target must be a number of experts, got {self.target!r}")
        if not float(self.target) >= 1.0:
            raise ValueError(f"dtop_p: target must be >= 1 expert per token, got {self.target}")
        if self.p_init is not None and not 0.0 < float(self.p_init) <= 1.0:
            raise ValueError(f"dtop_p: p_init must be in (0, 1], got {self.p_init}")
        if self.kp < 0 or self.ki < 0:
            raise ValueError(f"dtop_p: gains must be >= 0, got kp={self.kp}, ki={self.ki}")
        if not 0.0 < self.p_min <= 1.0:
            raise ValueError(f"dtop_p: p_min must be in (0, 1], got {self.p_min}")
        if self.max_experts is not None:
            check_int(self.max_experts, "max_experts", "dtop_p", 1)

    def initial_p(self, num_experts: int) -> float:
        """p before any step: ``p_init`` or ``(target − 0.5) / E`` within [p_min, 1]."""
        p = self.p_init if self.p_init is not None else (self.target - 0.5) / num_experts
        return min(max(float(p), self.p_min), 1.0)

    def make_state(self, num_experts: int, d_model: int) -> DTopPState:
        if self.target > num_experts:
            raise ValueError(
                f"dtop_p: target {self.target} exceeds the layer's {num_experts} experts; "
                f"choose target in [1, {num_experts}]"
            )
        return DTopPState(self.initial_p(num_experts))

    def route(
        self, logits: Tensor, state: nn.Module | None = None, ctx: RouteContext | None = None
    ) -> Routing:
        """Called bare (``router(logits)``, no layer's state): scale 1, p at its initial value."""
        logits = as_router_logits(logits, "dtop_p")
        e = logits.shape[1]
        if state is None:
            scale, p = None, torch.tensor(self.initial_p(e), device=logits.device)
        else:
            scale, p = state.scale, state.p
        probs = torch.softmax(logits if scale is None else logits * scale.float(), dim=-1)
        mask = top_p_mask(probs.detach(), p, self.max_experts)
        weights = probs
        if self.normalize:
            kept = probs * mask
            weights = kept / kept.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        routing = Routing.from_mask(mask, weights, probs)
        if state is not None and ctx is not None and ctx.training:
            with torch.no_grad():  # counted on the device; read once per step
                state.assignments += routing.num_assignments
                state.tokens += routing.num_tokens
        return routing

    def after_step(self, states: list[nn.Module]) -> None:
        assignments = sum(float(s.assignments) for s in states)
        tokens = sum(float(s.tokens) for s in states)
        if tokens == 0:
            return  # no training forward since the last step (e.g. resumed)
        k_bar = assignments / tokens
        first = states[0]
        error = self.target - k_bar
        p = float(first.p) + self.kp * (error - float(first.error)) + self.ki * error
        p = min(max(p, self.p_min), 1.0)
        running = float(first.k_running)
        running = k_bar if running != running else 0.9 * running + 0.1 * k_bar  # nan: first
        for s in states:
            s.p.fill_(p)
            s.error.fill_(error)
            s.k_running.fill_(running)
            s.assignments.zero_()
            s.tokens.zero_()
