"""Hand-made routings and a tiny MoE language model for the analysis tests."""

from __future__ import annotations

import torch
from torch import nn

from dynroute.layers import MoE
from dynroute.routing import Routing


def make_routing(pairs: list[list[int]], num_experts: int) -> Routing:
    """A Routing where token n runs exactly the experts ``pairs[n]`` (weights uniform)."""
    token = torch.tensor([n for n, es in enumerate(pairs) for _ in es], dtype=torch.long)
    expert = torch.tensor([e for es in pairs for e in es], dtype=torch.long)
    probs = torch.full((len(pairs), num_experts), 1.0 / num_experts)
    return Routing.from_assignments(token, expert, torch.ones(token.numel()), probs, num_experts)


class TinyLM(nn.Module):
    """Embedding + MoE layers (residual) + head: no attention, so routing is per token."""

    def __init__(self, vocab: int = 32, d: int = 16, layers: int = 2, experts: int = 4, **router):
        super().__init__()
        router = router or {"router": "top_k", "k": 2}
        self.emb = nn.Embedding(vocab, d)
        self.moes = nn.ModuleList([MoE(d, 2 * d, experts, **router) for _ in range(layers)])
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        for moe in self.moes:
            h = h + moe(h)[0]
        return self.head(h)
