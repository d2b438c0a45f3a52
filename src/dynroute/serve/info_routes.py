"""``GET /health`` and ``GET /v1/models`` of both apps: what each keeps on ``app.state``
for them (:mod:`dynroute.serve.state`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

__all__ = ["model_card", "router"]

router = APIRouter()


def model_card(model_id: str, created: int, **extra: Any) -> dict[str, Any]:
    """One entry of ``GET /v1/models``.

    Example:
        >>> model_card("tiny", 0, max_model_len=256)["max_model_len"]
        256
    """
    return {"id": model_id, "object": "model", "created": created, "owned_by": "dynroute", **extra}


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return {"status": "ok", **request.app.state.health()}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": request.app.state.model_cards}
