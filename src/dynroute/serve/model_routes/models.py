"""``GET /v1/models`` of the model server: the one model, with its context length."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dynroute.serve.model_routes.state import created_at, served_model

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    served = served_model(request)
    return {
        "object": "list",
        "data": [
            {
                "id": served.name,
                "object": "model",
                "created": created_at(request),
                "owned_by": "dynroute",
                "max_model_len": served.context_length,
            }
        ],
    }
