"""``POST /v1/completions`` of the proxy: the router reads the prompt."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dynroute.serve.parsing import parse_body
from dynroute.serve.proxy_routes.forward import forward
from dynroute.serve.schemas import CompletionRequest

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> Response:
    body, req = await parse_body(request, CompletionRequest)
    return await forward(request, "/completions", body, req, req.prompt_text())
