"""The app of ``dynroute serve``: one model behind the OpenAI API (its routes:
:mod:`~dynroute.serve.state`, :mod:`~dynroute.serve.model_routes`). Middleware and
dependencies go on the app here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from dynroute.serve import model_routes, state
from dynroute.serve.engine import GenerationEngine
from dynroute.serve.errors import install_error_handlers
from dynroute.serve.loading import ServedModel
from dynroute.serve.middleware import install_middleware
from dynroute.serve.model_routes import ModelLimits
from dynroute.serve.schemas import now

__all__ = ["create_app"]


def create_app(
    served: ServedModel,
    *,
    max_batch: int = 8,
    wait_ms: float = 5.0,
    api_keys: frozenset[str] = frozenset(),
    limits: ModelLimits | None = None,
    max_concurrent: int = 0,
) -> FastAPI:
    """The app serving ``served`` (its engine starts and stops with the app's lifespan);
    with ``api_keys``, every path but ``/health`` needs one (:mod:`~dynroute.serve.auth`);
    ``GET /metrics`` counts requests (:mod:`~dynroute.serve.metrics`); ``limits`` bound
    what one request may ask (:class:`~dynroute.serve.model_routes.ModelLimits`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = GenerationEngine(
            served.model,
            served.tokenizer,
            pad_batching=served.pad_batching,
            max_batch=max_batch,
            wait_ms=wait_ms,
        )
        app.state.engine = engine
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    app = FastAPI(title=f"dynroute serve: {served.name}", lifespan=lifespan)
    app.state.served = served
    app.state.model_limits = limits or ModelLimits()
    app.state.health = lambda: {"model": served.name, "batching": dict(app.state.engine.stats)}
    card = state.model_card(served.name, now(), max_model_len=served.context_length)
    app.state.model_cards = [card]
    install_error_handlers(app)
    for module in (state, model_routes):
        app.include_router(module.router)
    metrics = install_middleware(app, api_keys, max_concurrent)
    metrics.watch(
        "dynroute_cancelled",
        "Generations stopped because their client left",
        lambda: app.state.engine.stats["cancelled"] if hasattr(app.state, "engine") else 0,
        counter=True,
    )
    return app
