"""``GET /v1/models`` of the proxy: ``auto``, ``router-NAME``, then every backend."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dynroute.serve.proxy_routes.state import created_at, policy_of

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    created = created_at(request)
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "dynroute"}
            for m in policy_of(request).model_ids()
        ],
    }
