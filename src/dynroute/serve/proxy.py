"""The routing proxy of ``dynroute llm serve``: the OpenAI API in front of several backends
(its routes: :mod:`~dynroute.serve.state`, :mod:`~dynroute.serve.proxy_routes`).
Middleware and dependencies go on the app here.

An error no handler expected is a 500 in OpenAI's error shape with a generic message
(:data:`dynroute.serve.errors.INTERNAL_ERROR`): its text and traceback go to the log only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from dynroute.serve import proxy_routes, state
from dynroute.serve.budgets import Budgets
from dynroute.serve.decisions import DecisionLog
from dynroute.serve.errors import install_error_handlers
from dynroute.serve.metrics import MeteredLog
from dynroute.serve.middleware import install_middleware
from dynroute.serve.policy import RoutingPolicy
from dynroute.serve.probes import probing
from dynroute.serve.schemas import now
from dynroute.serve.store import Store

__all__ = ["create_proxy_app"]


def create_proxy_app(
    policy: RoutingPolicy,
    log: DecisionLog | None = None,
    *,
    timeout_s: float = 60.0,
    connect_timeout_s: float = 2.0,
    api_keys: frozenset[str] = frozenset(),
    max_concurrent: int = 0,
    store: Store | None = None,
    limits: proxy_routes.ProxyLimits | None = None,
) -> FastAPI:
    """The proxy app (its HTTP client to the backends opens and closes with the app's
    lifespan; the log closes with it); with ``api_keys``, every path but ``/health``
    needs one of them (:mod:`~dynroute.serve.auth`); ``GET /metrics`` counts requests and
    every decision (routed share, tokens, spend per backend). With a ``store`` (``--db``),
    every key's budget and rate limits are checked before a backend is called
    (:mod:`~dynroute.serve.budgets`; give ``log`` the same store to keep its rows there);
    the store closes with the app. ``limits``: the largest body, the ``max_tokens`` cap
    (:class:`~dynroute.serve.proxy_routes.ProxyLimits`; default: 1 MB, no cap).
    ``POST /v1/feedback`` scores a logged answer (a row of ``log``; ``log.log_queries``:
    decision rows hold the query text that ``dynroute llm update`` learns from)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )
        try:
            async with probing(app):  # the backends' breakers (dynroute.serve.probes)
                yield
        finally:
            await app.state.client.aclose()
            app.state.decision_log.close()
            if store is not None:
                store.close()

    app = FastAPI(title="dynroute llm serve", lifespan=lifespan)
    app.state.policy = policy
    app.state.proxy_limits = limits or proxy_routes.ProxyLimits()
    app.state.decision_log = log or DecisionLog(None, store)
    app.state.feedback_log = app.state.decision_log  # POST /v1/feedback: not a decision
    app.state.health = policy.health
    created = now()
    app.state.model_cards = [state.model_card(m, created) for m in policy.model_ids()]
    install_error_handlers(app)
    for module in (state, proxy_routes):
        app.include_router(module.router)
    metrics = install_middleware(app, api_keys, max_concurrent)
    app.state.budgets = None if store is None else Budgets(store, metrics.registry)
    app.state.decision_log = MeteredLog(app.state.decision_log, metrics)
    return app
