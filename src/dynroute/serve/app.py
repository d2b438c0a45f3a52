"""The app of ``dynroute serve``: one model behind the OpenAI API.

Its routes are :mod:`~dynroute.serve.info_routes` and :mod:`~dynroute.serve.model_routes`.
Generation runs on a :class:`~dynroute.serve.engine.GenerationEngine` (micro-batching) that
starts and stops with the app; the event loop only parses, validates and streams.
Middleware and dependencies go on the app here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from dynroute.serve import info_routes
from dynroute.serve.engine import GenerationEngine
from dynroute.serve.errors import install_error_handlers
from dynroute.serve.loading import ServedModel
from dynroute.serve.model_routes import chat, completions
from dynroute.serve.schemas import now

__all__ = ["create_app", "engine_lifespan"]


def engine_lifespan(
    max_batch: int, wait_ms: float
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan running ``app.state.served`` on ``app.state.engine`` while the app serves."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served: ServedModel = app.state.served
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

    return lifespan


def create_app(served: ServedModel, *, max_batch: int = 8, wait_ms: float = 5.0) -> FastAPI:
    """The app serving ``served`` (its engine starts and stops with the app's lifespan)."""
    app = FastAPI(
        title=f"dynroute serve: {served.name}", lifespan=engine_lifespan(max_batch, wait_ms)
    )
    app.state.served = served
    app.state.health = lambda: {"model": served.name, "batching": dict(app.state.engine.stats)}
    card = info_routes.model_card(served.name, now(), max_model_len=served.context_length)
    app.state.model_cards = [card]
    install_error_handlers(app)
    for module in (info_routes, completions, chat):
        app.include_router(module.router)
    return app
