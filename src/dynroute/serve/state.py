"""``app.state`` of both apps: what handlers read there, and the three routes that show it.

Both apps set ``health`` (a function: the app's own fields of ``GET /health``),
``model_cards`` (what ``GET /v1/models`` lists) and ``metrics`` (``GET /metrics``).
:func:`~dynroute.serve.app.create_app` sets ``served``, its lifespan ``engine``;
:func:`~dynroute.serve.proxy.create_proxy_app` sets ``policy`` and ``decision_log``, its
lifespan ``client`` (every backend call's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, Request, Response

if TYPE_CHECKING:
    import httpx

    from dynroute.serve.decisions import DecisionLog
    from dynroute.serve.engine import GenerationEngine
    from dynroute.serve.loading import ServedModel
    from dynroute.serve.policy import RoutingPolicy

__all__ = [
    "client_of",
    "decision_log",
    "engine_of",
    "model_card",
    "policy_of",
    "router",
    "served_model",
]

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return {"status": "ok", **request.app.state.health()}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": request.app.state.model_cards}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus' text format (:mod:`dynroute.serve.metrics`)."""
    from dynroute.serve.metrics import CONTENT_TYPE_LATEST

    body = request.app.state.metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def model_card(model_id: str, created: int, **extra: Any) -> dict[str, Any]:
    """One entry of ``GET /v1/models``."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "dynroute", **extra}


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
