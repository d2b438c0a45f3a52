"""What both apps wrap their routes in: a per-client concurrency limit
(:mod:`~dynroute.serve.limits`) innermost, API keys (:mod:`~dynroute.serve.auth`) around
it, request metrics (:mod:`~dynroute.serve.metrics`) outermost, so a refused request is
counted.
"""

from __future__ import annotations

from fastapi import FastAPI

from dynroute.serve.auth import RequireKey
from dynroute.serve.limits import LimitConcurrency
from dynroute.serve.metrics import CountRequests, ServerMetrics

__all__ = ["install_middleware"]


def install_middleware(
    app: FastAPI, api_keys: frozenset[str], max_concurrent: int = 0
) -> ServerMetrics:
    """Per-client concurrency (``max_concurrent`` > 0), key check (when ``api_keys``) and
    request counting on ``app``, innermost first; its metrics, also at
    ``app.state.metrics`` (``GET /metrics``)."""
    metrics = ServerMetrics()
    app.state.metrics = metrics
    if max_concurrent > 0:  # inside the key check: only a known client holds a slot
        app.add_middleware(LimitConcurrency, max_concurrent=max_concurrent)
    if api_keys:
        app.add_middleware(RequireKey, keys=api_keys)
    app.add_middleware(CountRequests, metrics=metrics)  # added last: the outermost
    return metrics
