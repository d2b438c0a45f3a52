"""The seven routers with state or context, as specs, and how tests call them."""

from __future__ import annotations

import torch

from dynroute.routing import RouteContext, Routing, make_router

#: name -> a spec with small knobs (E >= 4 in every test that uses them)
STATEFUL = {
    "dtop_p": "dtop_p:target=1.5",
    "deepseek_v3": "deepseek_v3:k=2,n_group=2,topk_group=1",
    "relu": "relu:target=2",
    "rmoe": "rmoe:k=2,hidden_size=8",
    "graph_of_tokens": "graph_of_tokens:k=2,alpha=0.5",
    "thor": "thor",
    "smoe_dropout": "smoe_dropout:k_start=2,k_end=3",
}
#: routers whose combine weights are constants (random or frozen routers)
RANDOM_ROUTERS = {"thor", "smoe_dropout"}


def route_fresh(
    spec: str, logits: torch.Tensor, training: bool = True, seq_len: int | None = None
) -> Routing:
    """Route ``logits`` [N, E] with a fresh state (seeded), hidden states = the logits
    themselves (d = E) and sequences of ``seq_len`` tokens (one sequence if None)."""
    n, e = logits.shape
    router = make_router(spec)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = router.make_state(e, e)
        shape = (n // seq_len, seq_len) if seq_len else (n,)
        ctx = RouteContext(batch_shape=shape, hidden=logits, training=training)
        return router.route(logits, state, ctx)
