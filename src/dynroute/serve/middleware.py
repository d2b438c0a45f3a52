"""What both apps wrap their routes in: a per-client concurrency limit
(:mod:`~dynroute.serve.limits`) innermost, API keys (:mod:`~dynroute.serve.auth`) around
it, the drain on SIGTERM (:mod:`~dynroute.serve.drain`, ``app.state.drain``) around that,
request metrics (:mod:`~dynroute.serve.metrics`) outermost, so a refused request is
counted.
"""

from __future__ import annotations

from fastapi import FastAPI

from dynroute.serve.auth import RequireKey
from dynroute.serve.drain import Drain, RefuseWhenDraining
from dynroute.serve.limits import LimitConcurrency
from dynroute.serve.metrics import CountRequests, ServerMetrics

__all__ = ["install_middleware"]


def install_middleware(
    app: FastAPI, api_keys: frozenset[str], max_concurrent: int = 0
) -> ServerMetrics:
    """Per-client concurrency (``max_concurrent`` > 0), key check (when ``api_keys``), the
    drain and request counting on ``app``, innermost first; its metrics, also at
    ``app.state.metrics`` (``GET /metrics``)."""
    metrics = ServerMetrics()
    app.state.metrics = metrics
    app.state.drain = drain = Drain()
    metrics.watch(
        "dynroute_draining", "1: SIGTERM came, new requests get 503", lambda: drain.draining
    )
    if max_concurrent > 0:  # inside the key check: only a known client holds a slot
        app.add_middleware(LimitConcurrency, max_concurrent=max_concurrent)
    if api_keys:
        app.add_middleware(RequireKey, keys=api_keys)
    app.add_middleware(RefuseWhenDraining, drain=drain)  # before the key: a probe needs none
    app.add_middleware(CountRequests, metrics=metrics)  # added last: the outermost
    return metrics
