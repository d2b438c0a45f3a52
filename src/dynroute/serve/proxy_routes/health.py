"""``GET /health`` of the proxy: its router and which backends are cooling down."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from dynroute.serve.proxy_routes.state import policy_of

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    policy = policy_of(request)
    clock = time.monotonic()
    return {
        "status": "ok",
        "router": policy.router.name,
        "backends": {
            b.name: "cooling down" if b.down_until > clock else "ok" for b in policy.backends
        },
    }
