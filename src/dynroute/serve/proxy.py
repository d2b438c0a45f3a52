"""The routing proxy of ``dynroute llm serve``: the OpenAI API in front of several backends.

Each request is validated (a malformed one is a 400 here, never forwarded), decided by a
:class:`~dynroute.serve.policy.RoutingPolicy` and forwarded to the backends in the
decision's order (:mod:`dynroute.serve.proxy_routes`); every request is logged
(:class:`~dynroute.serve.decisions.DecisionLog`). Middleware and dependencies go on the
app here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
from fastapi import FastAPI

from dynroute.serve import info_routes
from dynroute.serve.decisions import DecisionLog
from dynroute.serve.errors import install_error_handlers
from dynroute.serve.policy import RoutingPolicy
from dynroute.serve.proxy_routes import forward
from dynroute.serve.schemas import now

__all__ = ["client_lifespan", "create_proxy_app"]


def client_lifespan(
    timeout_s: float, connect_timeout_s: float
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that opens ``app.state.client`` (the HTTP client to the backends) and,
    when the app stops, closes it and ``app.state.decision_log``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )
        try:
            yield
        finally:
            await app.state.client.aclose()
            app.state.decision_log.close()

    return lifespan


def create_proxy_app(
    policy: RoutingPolicy,
    log: DecisionLog | None = None,
    *,
    timeout_s: float = 60.0,
    connect_timeout_s: float = 2.0,
) -> FastAPI:
    """The proxy app (its HTTP client opens and closes with the app's lifespan)."""
    app = FastAPI(
        title="dynroute llm serve", lifespan=client_lifespan(timeout_s, connect_timeout_s)
    )
    app.state.policy = policy
    app.state.decision_log = log or DecisionLog(None)
    app.state.health = policy.health
    created = now()
    app.state.model_cards = [info_routes.model_card(m, created) for m in policy.model_ids()]
    install_error_handlers(app)
    for module in (info_routes, forward):
        app.include_router(module.router)
    return app
