"""``POST /v1/chat/completions`` of the proxy: the router reads the last user message."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dynroute.serve.parsing import parse_body
from dynroute.serve.proxy_routes.forward import forward
from dynroute.serve.schemas import ChatCompletionRequest

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat(request: Request) -> Response:
    body, req = await parse_body(request, ChatCompletionRequest)
    return await forward(request, "/chat/completions", body, req, req.last_user_text())
