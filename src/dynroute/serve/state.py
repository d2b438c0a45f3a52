"""What the handlers of both apps read from ``request.app.state``.

Both apps set ``health`` (a function: the app's own fields of ``GET /health``) and
``model_cards`` (the list ``GET /v1/models`` answers). :func:`~dynroute.serve.app.create_app`
sets ``served``, its lifespan ``engine``; :func:`~dynroute.serve.proxy.create_proxy_app`
sets ``policy`` and ``decision_log``, its lifespan ``client`` (every backend call's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from fastapi import Request

if TYPE_CHECKING:
    import httpx

    from dynroute.serve.decisions import DecisionLog
    from dynroute.serve.engine import GenerationEngine
    from dynroute.serve.loading import ServedModel
    from dynroute.serve.policy import RoutingPolicy

__all__ = ["client_of", "decision_log", "engine_of", "policy_of", "served_model"]


def served_model(request: Request) -> ServedModel:
    return cast("ServedModel", request.app.state.served)


def engine_of(request: Request) -> GenerationEngine:
    return cast("GenerationEngine", request.app.state.engine)


def policy_of(request: Request) -> RoutingPolicy:
    return cast("RoutingPolicy", request.app.state.policy)


def decision_log(request: Request) -> DecisionLog:
    return cast("DecisionLog", request.app.state.decision_log)


def client_of(request: Request) -> httpx.AsyncClient:
    return cast("httpx.AsyncClient", request.app.state.client)
