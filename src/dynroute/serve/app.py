"""The OpenAI-compatible HTTP app of ``dynroute serve``: one model, four routes.

``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions`` (one module each in :mod:`dynroute.serve.model_routes`),
streaming (server-sent events: ``data: {chunk}`` lines, then ``data: [DONE]``) or not,
each answer with its ``usage`` token counts. Generation runs on a
:class:`~dynroute.serve.engine.GenerationEngine` (micro-batching) that starts and stops
with the app; the event loop only parses, validates and streams. The handlers read the
model and the engine from ``request.app.state``
(:mod:`dynroute.serve.model_routes.state`); middleware and dependencies go on the app
here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from dynroute.serve.engine import GenerationEngine
from dynroute.serve.errors import install_error_handlers
from dynroute.serve.loading import ServedModel
from dynroute.serve.model_routes import chat, completions, health, models
from dynroute.serve.schemas import now

__all__ = ["create_app", "engine_lifespan"]


def engine_lifespan(
    max_batch: int, wait_ms: float
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that runs ``app.state.served`` on a :class:`GenerationEngine` (set as
    ``app.state.engine``) while the app serves, and closes it after."""

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
    app.state.created = now()
    install_error_handlers(app)
    for module in (health, models, completions, chat):
        app.include_router(module.router)
    return app
