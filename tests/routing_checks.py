"""The invariants every Routing satisfies, whichever router made it."""

import torch

from dynroute.routing import Routing


def check_invariants(r: Routing, n: int) -> None:
    a = r.num_assignments
    assert r.token.shape == r.expert.shape == r.weight.shape == (a,)
    assert r.token.dtype == r.expert.dtype == torch.long
    assert r.weight.dtype == torch.float32 and r.probs.dtype == torch.float32
    assert r.probs.shape == (n, r.num_experts)
    assert torch.all(r.weight >= 0) and torch.all(torch.isfinite(r.weight))
    assert torch.all(r.expert[1:] >= r.expert[:-1]), "assignments must be sorted by expert"
    if a:
        assert int(r.token.min()) >= 0 and int(r.token.max()) < n
        assert int(r.expert.min()) >= 0 and int(r.expert.max()) < r.num_experts
    # no (token, expert) pair twice
    pairs = r.token * r.num_experts + r.expert
    assert pairs.unique().numel() == a
    assert int(r.experts_per_token().sum()) == a == int(r.expert_counts().sum())
    assert r.experts_per_token().shape == (n,) and r.expert_counts().shape == (r.num_experts,)
    # counts match the assignments
    for e in range(r.num_experts):
        assert int(r.expert_counts()[e]) == int((r.expert == e).sum())
