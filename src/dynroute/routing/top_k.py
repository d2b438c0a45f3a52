"""Fixed top-k routing: Switch (k=1), GShard/Mixtral (k=2, normalized), OLMoE (no normalization)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from dynroute.routing.checks import as_router_logits, check_int
from dynroute.routing.registry import Router, register_router
from dynroute.routing.sweep import SweepSpec
from dynroute.routing.types import Routing


def top_k(logits: Tensor, k: int, normalize: bool = True) -> Routing:
    """Route every token to its k most probable experts.

    Softmax in float32 over E experts, take the top k; with ``normalize`` the k
    weights are divided by their sum (Mixtral), otherwise they are the raw
    probabilities (OLMoE, Switch with k=1 and ``normalize=False``).

    Args:
        logits: [N, E] router logits, any float dtype.
        k: experts per token, 1 <= k <= E.
        normalize: renormalize the kept probabilities to sum to 1.

    Returns:
        Routing with N·k assignments.

    Example:
        >>> import torch
        >>> r = top_k(torch.tensor([[3.0, 1.0, 2.0]]), k=2)
        >>> r.expert.tolist(), [round(w, 3) for w in r.weight.tolist()]
        ([0, 2], [0.731, 0.269])
    """
    logits = as_router_logits(logits, "top_k")
    n, e = logits.shape
    check_int(k, "k", "top_k", 1, e)
    probs = torch.softmax(logits, dim=-1)
    weight, expert = torch.topk(probs, k, dim=-1)
    if normalize:
        weight = weight / weight.sum(dim=-1, keepdim=True)
    # [0,0,1,1,...]: an expand, no repeat_interleave (whose output size may be read on the host)
    token = torch.arange(n, device=logits.device)[:, None].expand(n, k).reshape(-1)
    return Routing.from_assignments(token, expert.reshape(-1), weight.reshape(-1), probs, e)


@register_router("top_k")
@dataclass(frozen=True)
class TopK(Router):
    """:func:`top_k` as a router: ``TopK(k=2)(logits)``.

    Example:
        >>> import torch
        >>> TopK(k=1)(torch.tensor([[0.0, 3.0]])).expert.tolist()
        [1]
    """

    examples: ClassVar[tuple[str, ...]] = (
        "top_k:k=2",  # Mixtral: renormalised
        "top_k:k=1",  # renormalised top-1: every weight is 1
        "top_k:k=1,normalize=false",  # Switch: the weight is the router's probability
        "top_k:k=2,normalize=false",  # OLMoE
    )
    sweeps: ClassVar[Mapping[str, SweepSpec]] = {
        # k = 1 as in Switch Transformer: the weight is the router's probability, not
        # renormalised to 1 (which would leave the router no gradient from the LM loss).
        "top_k": SweepSpec(
            "k",
            {1.0: 1, 2.0: 2, 3.0: 3},
            per_value={1: {"normalize": False}},
            source="exact: k̄ = k",
        ),
    }
    host_syncs: ClassVar[int | None] = 0  # N·k assignments: nothing to size on the host

    k: int
    normalize: bool = True

    def __post_init__(self) -> None:
        check_int(self.k, "k", "top_k", 1)

    def __call__(self, logits: Tensor) -> Routing:
        return top_k(logits, self.k, self.normalize)
