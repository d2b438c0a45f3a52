"""What the model server's handlers read from ``request.app.state``.

:func:`dynroute.serve.app.create_app` sets ``served`` (the
:class:`~dynroute.serve.loading.ServedModel`) and ``created`` (the server's start, Unix
seconds); its lifespan sets ``engine`` (the
:class:`~dynroute.serve.engine.GenerationEngine`).
"""

from __future__ import annotations

from fastapi import Request

from dynroute.serve.engine import GenerationEngine
from dynroute.serve.loading import ServedModel

__all__ = ["created_at", "engine_of", "served_model"]


def served_model(request: Request) -> ServedModel:
    model: ServedModel = request.app.state.served
    return model


def engine_of(request: Request) -> GenerationEngine:
    engine: GenerationEngine = request.app.state.engine
    return engine


def created_at(request: Request) -> int:
    return int(request.app.state.created)
