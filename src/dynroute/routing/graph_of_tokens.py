"""Graph of Tokens: mix a token's routing logits with those of similar earlier tokens.

"Improving Routing in Sparse Mixture of Experts with Graph of Tokens" (Nguyen et al.,
2025; REFERENCES.md "More MoE routers"): a token's routing is combined with that of the
tokens similar to it, with attention-like weights, before top-k, which stabilises it.

The variant here, exactly (similarity of the router logits, causal, within a sequence):
for a sequence's logits z [T, E] (float32),

- ``A = softmax_j( z_i · z_j / (τ · √E) )`` over j ≤ i only (earlier tokens and itself;
  a token never reads a later one, so LM training does not leak the future);
- ``z'_i = (1 − α) · z_i + α · Σ_j A_ij z_j``;
- top-k of ``softmax(z')``, renormalised over the k when ``normalize``
  (:func:`~dynroute.routing.top_k.top_k`); gradients flow through A as well.

Sequences come from ``RouteContext.batch_shape`` ([B, T] inputs: B sequences of T);
without it (HF adapters, [N, d] inputs) the N tokens are one sequence in their order.
Knobs: ``k`` = 2, ``alpha`` = 0.5, ``temperature`` τ = 1 (our defaults).
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
from dynroute.routing.sweep import FIXED_K, SweepSpec
from dynroute.routing.top_k import top_k
from dynroute.routing.types import Routing

__all__ = ["GraphOfTokens", "mix_similar_logits"]


def mix_similar_logits(
    logits: Tensor, sequences: int, alpha: float, temperature: float = 1.0
) -> Tensor:
    """Logits [N, E] (``sequences`` runs of N / sequences tokens) mixed causally with
    those of similar tokens: ``(1 − α) z_i + α Σ_{j ≤ i} A_ij z_j``.

    Example:
        >>> z = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
        >>> mix_similar_logits(z, 1, alpha=1.0)[0].tolist()  # the first token sees itself
        [4.0, 0.0]
        >>> bool(mix_similar_logits(z, 1, alpha=1.0)[1, 0] > 0)  # the second, the first too
        True
    """
    n, e = logits.shape
    if n == 0 or alpha == 0:
        return logits
    z = logits.view(sequences, n // sequences, e)
    t = z.shape[1]
    scores = z @ z.transpose(1, 2) / (temperature * e**0.5)  # [B, T, T]
    future = torch.ones(t, t, dtype=torch.bool, device=z.device).triu(1)
    attn = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return ((1.0 - alpha) * z + alpha * (attn @ z)).reshape(n, e)


@register_router("graph_of_tokens")
@dataclass(frozen=True)
class GraphOfTokens(Router):
    """Top-k over logits mixed with those of similar earlier tokens of the same sequence.

    Example:
        >>> from dynroute.routing import RouteContext, make_router
        >>> router = make_router("graph_of_tokens:k=1,alpha=0.5")
        >>> r = router.route(torch.randn(6, 4), None, RouteContext(batch_shape=(2, 3)))
        >>> r.experts_per_token().tolist()
        [1, 1, 1, 1, 1, 1]
    """

    mixes_tokens: ClassVar[bool] = True
    examples: ClassVar[tuple[str, ...]] = ("graph_of_tokens:k=2,alpha=0.5",)
    sweeps: ClassVar[Mapping[str, SweepSpec]] = {"graph_of_tokens": FIXED_K}
    host_syncs: ClassVar[int | None] = 0  # N·k assignments

    k: int = 2
    alpha: float = 0.5
    temperature: float = 1.0
    normalize: bool = True

    def __post_init__(self) -> None:
        check_int(self.k, "k", "graph_of_tokens", 1)
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"graph_of_tokens: alpha must be in [0, 1], got {self.alpha}")
        if not float(self.temperature) > 0:
            raise ValueError(f"graph_of_tokens: temperature must be > 0, got {self.temperature}")

    def route(
        self, logits: Tensor, state: nn.Module | None = None, ctx: RouteContext | None = None
    ) -> Routing:
        """Called bare (``router(logits)``, no context): the N tokens are one sequence."""
        logits = as_router_logits(logits, "graph_of_tokens")
        b, _ = (ctx or RouteContext()).sequences(logits.shape[0])
        mixed = mix_similar_logits(logits, b, float(self.alpha), float(self.temperature))
        return top_k(mixed, self.k, self.normalize)
