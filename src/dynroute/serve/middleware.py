"""What both apps wrap their routes in: API keys (:mod:`~dynroute.serve.auth`) inside,
request metrics (:mod:`~dynroute.serve.metrics`) outside, so a refused request is counted.
"""

from __future__ import annotations

from fastapi import FastAPI

from dynroute.serve.auth import RequireKey
from dynroute.serve.metrics import CountRequests, ServerMetrics

__all__ = ["install_middleware"]


def install_middleware(app: FastAPI, api_keys: frozenset[str]) -> ServerMetrics:
    """Key check (when ``api_keys``) and request counting on ``app``; its metrics, also
    at ``app.state.metrics`` (``GET /metrics``)."""
    metrics = ServerMetrics()
    app.state.metrics = metrics
    if api_keys:
        app.add_middleware(RequireKey, keys=api_keys)
    app.add_middleware(CountRequests, metrics=metrics)  # added last: the outermost
    return metrics
