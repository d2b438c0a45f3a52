"""The proxy's two POST routes: validate, decide, then try the decision's backends in order.

Each backend gets the request as the client sent it (unknown fields included) with its
own model id. A backend that cannot be reached, times out, or answers 5xx/408/429 is
cooled down (:meth:`~dynroute.serve.policy.RoutingPolicy.mark_down`) and the next one is
tried, before any byte reached the client; its 4xx is passed back (the request is at
fault). When none answers: 503 with OpenAI's error JSON naming each failure.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response

from dynroute.serve.backends import Backend
from dynroute.serve.errors import ApiError, parse_body
from dynroute.serve.proxy_routes.exchange import Exchange
from dynroute.serve.proxy_routes.relay import answer, stream_back
from dynroute.serve.schemas import ChatCompletionRequest, CompletionRequest, GenerationParams
from dynroute.serve.state import client_of, decision_log, policy_of

__all__ = ["RETRY_STATUS", "backend_payload", "forward", "router", "send"]

router = APIRouter()

#: a backend answering with these is skipped and the next one tried
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def backend_payload(body: dict[str, Any], backend: Backend, stream: bool) -> dict[str, Any]:
    """The body for ``backend``: its model id; a stream also asks for ``usage`` (to price
    the answer; dropped on the way back if the client did not ask).

    Example:
        >>> b = Backend("small", "http://127.0.0.1:8001", model="tiny-a")
        >>> backend_payload({"model": "auto", "stream": True}, b, stream=True)
        {'model': 'tiny-a', 'stream': True, 'stream_options': {'include_usage': True}}
    """
    payload = {**body, "model": backend.model}
    if stream:
        payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return payload


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> Response:
    body, req = await parse_body(request, CompletionRequest)
    return await forward(request, "/completions", body, req, req.prompt_text())


@router.post("/v1/chat/completions", response_model=None)
async def chat(request: Request) -> Response:
    body, req = await parse_body(request, ChatCompletionRequest)
    return await forward(request, "/chat/completions", body, req, req.last_user_text())


async def send(
    client: httpx.AsyncClient, backend: Backend, path: str, payload: dict[str, Any], stream: bool
) -> httpx.Response | str:
    """The backend's response, or why it failed (the caller tries the next backend)."""
    try:
        upstream = await client.send(
            client.build_request(
                "POST",
                backend.url(path),
                content=json.dumps(payload),
                headers={"content-type": "application/json", **backend.headers()},
            ),
            stream=stream,
        )
    except httpx.HTTPError as err:  # refused, reset, timed out
        return f"{type(err).__name__}: {err}"[:200]
    if upstream.status_code in RETRY_STATUS:
        if stream:
            await upstream.aclose()
        return f"HTTP {upstream.status_code}"
    return upstream


async def forward(
    request: Request, path: str, body: dict[str, Any], req: GenerationParams, query: str
) -> Response:
    """The answer to a request to ``/v1{path}`` (``query``: the text the router reads)."""
    policy, client = policy_of(request), client_of(request)
    exchange = Exchange.begin(policy, decision_log(request), path, req, query)
    attempts: list[dict[str, str]] = []
    for backend in exchange.decision.order:
        payload = backend_payload(body, backend, req.stream)
        sent = time.perf_counter()
        upstream = await send(client, backend, path, payload, req.stream)
        if isinstance(upstream, str):
            policy.mark_down(backend)
            attempts.append({"backend": backend.name, "error": upstream})
            continue
        policy.mark_up(backend)
        exchange.row.update(attempts=attempts)
        exchange.upstream_start = sent
        if req.stream and upstream.status_code == 200:
            return stream_back(upstream, backend, exchange, req.include_usage)
        return await answer(upstream, backend, exchange)
    return no_backend(exchange, attempts)


def no_backend(exchange: Exchange, attempts: list[dict[str, str]]) -> Response:
    """The 503 when every backend failed (logged with the attempts)."""
    exchange.policy.settle(exchange.decision, 0.0)
    names = ", ".join(f"{a['backend']} ({a['error']})" for a in attempts)
    exchange.finish(None, 503, attempts=attempts)
    return ApiError(
        503, f"no backend could answer: {names}", kind="service_unavailable", code="no_backend"
    ).response()
