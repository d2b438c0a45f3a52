"""Shared dispatch test cases: small shapes, every router, seeded weights."""

import torch

from dynroute.routing import expert_choice, null_experts, top_k, top_p
from stateful_cases import STATEFUL, route_fresh

E, D, F = 6, 8, 12

ROUTERS = {
    "top_k1": lambda x: top_k(x, 1),
    "top_k2": lambda x: top_k(x, 2, normalize=False),
    "top_p": lambda x: top_p(x, 0.5),
    "top_p_norm_cap": lambda x: top_p(x, 0.7, max_experts=3, normalize=True),
    # a bias towards the nulls so that some tokens pick no real expert at all
    "null_experts": lambda x: null_experts(x + torch.tensor([0.0] * E + [4.0, 4.0]), 2, 2),
    "expert_choice": lambda x: expert_choice(x, 0.75),
    # routers with a layer state and a context (fresh, seeded state on each call)
    **{name: (lambda x, spec=spec: route_fresh(spec, x)) for name, spec in STATEFUL.items()},
}


def make_case(n: int, router: str, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    extra = 2 if router == "null_experts" else 0
    x = torch.randn(n, D, generator=g, dtype=dtype)
    gate = torch.randn(D, E + extra, generator=g, dtype=dtype) * 0.7
    gate_up = torch.randn(E, D, 2 * F, generator=g, dtype=dtype) * 0.3
    down = torch.randn(E, F, D, generator=g, dtype=dtype) * 0.3
    return [t.requires_grad_() for t in (x, gate, gate_up, down)]
