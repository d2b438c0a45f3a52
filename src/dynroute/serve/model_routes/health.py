"""``GET /health`` of the model server: its model and the engine's batching counters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dynroute.serve.model_routes.state import engine_of, served_model

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    batching = dict(engine_of(request).stats)
    return {"status": "ok", "model": served_model(request).name, "batching": batching}
