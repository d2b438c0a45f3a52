"""``POST /v1/completions`` and ``POST /v1/chat/completions`` of the routing proxy.

A validated request is decided (:meth:`Exchange.begin`) and sent as the client sent it
(unknown fields included), with each backend's own model id, to the decision's backends
in order. A backend that cannot be reached, times out, or answers 5xx/408/429 is cooled
down (:meth:`~dynroute.serve.policy.RoutingPolicy.mark_down`) and the next one is tried,
before any byte reached the client; its 4xx is passed back (the request is at fault).
When none answers: 503 naming each failure. An answer carries the backend's name in
``model`` (in each streamed chunk too) and in the ``x-dynroute-model`` header. A stream is
always asked for ``usage`` (to price it; a client that did not ask does not get it); a
backend that dies mid-stream is cooled down and the stream ends with an error event.
Each request is one row of the decision log, written by :meth:`Exchange.finish`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from dynroute.serve.backends import Backend
from dynroute.serve.decisions import DecisionLog, query_hash
from dynroute.serve.errors import ApiError, parse_body
from dynroute.serve.policy import Decision, RoutingPolicy
from dynroute.serve.schemas import (
    DONE,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationParams,
    error_body,
    sse,
    sse_data,
)
from dynroute.serve.state import client_of, decision_log, policy_of

__all__ = ["MODEL_HEADER", "RETRY_STATUS", "Exchange", "router"]

router = APIRouter()

MODEL_HEADER = "x-dynroute-model"
#: a backend answering with these is skipped and the next one tried
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> Response:
    body, req = await parse_body(request, CompletionRequest)
    return await forward(request, "/completions", body, req, req.prompt_text())


@router.post("/v1/chat/completions", response_model=None)
async def chat(request: Request) -> Response:
    body, req = await parse_body(request, ChatCompletionRequest)
    return await forward(request, "/chat/completions", body, req, req.last_user_text())


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
            events = relay(upstream, backend, exchange, req.include_usage)
            headers = {MODEL_HEADER: backend.name}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return await answer(upstream, backend, exchange)
    policy.settle(exchange.decision, 0.0)  # every backend failed: a 503, logged with why
    names = ", ".join(f"{a['backend']} ({a['error']})" for a in attempts)
    exchange.finish(None, 503, attempts=attempts)
    message = f"no backend could answer: {names}"
    return ApiError(503, message, kind="service_unavailable", code="no_backend").response()


@dataclass
class Exchange:
    """A decided request on its way (``start``, ``upstream_start``: ``perf_counter``)."""

    policy: RoutingPolicy
    log: DecisionLog
    decision: Decision
    row: dict[str, Any]
    start: float  # when the request arrived
    upstream_start: float = 0.0  # when it was sent to the backend that answers

    @classmethod
    def begin(
        cls,
        policy: RoutingPolicy,
        log: DecisionLog,
        endpoint: str,
        req: GenerationParams,
        query: str,
    ) -> Exchange:
        """Decide where the request goes (``query``: the text the router reads; a 404 for
        a ``model`` that is neither a router id nor a backend)."""
        start = time.perf_counter()
        decision = policy.decide(req.model, query, req.max_tokens)
        row: dict[str, Any] = {
            "query_sha256": query_hash(query),
            "endpoint": endpoint,
            "requested": req.model,
            "mode": decision.mode,
            "knob": decision.knob,
            "stream": req.stream,
            "estimated_cost": decision.estimated.get(decision.order[0].name),
        }
        return cls(policy, log, decision, row, start)

    def upstream_done(self) -> None:
        """Note how long the backend took; ``latency_ms`` minus this is the proxy's own."""
        self.row["upstream_ms"] = round((time.perf_counter() - self.upstream_start) * 1e3, 3)

    def finish(
        self,
        backend: Backend | None,
        status: int,
        usage: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        """Settle the cost (usage × prices, else the estimate; 0 for an error) and log."""
        decision = self.decision
        cost = None
        if backend is not None and usage:
            cost = backend.cost(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        if backend is not None and cost is None:
            cost = decision.estimated.get(backend.name)
        if backend is not None:
            self.policy.settle(decision, cost if status < 400 else 0.0)
        self.row.update(
            chosen=backend.name if backend else None,
            router_model=backend.router_model if backend else None,
            predicted_quality=decision.predicted.get(backend.name) if backend else None,
            cost=cost if status < 400 else 0.0,
            prompt_tokens=(usage or {}).get("prompt_tokens"),
            completion_tokens=(usage or {}).get("completion_tokens"),
            latency_ms=round((time.perf_counter() - self.start) * 1e3, 3),
            status=status,
            **extra,
        )
        self.log.write(self.row)


async def answer(upstream: httpx.Response, backend: Backend, exchange: Exchange) -> Response:
    """The backend's whole answer (its status kept; a non-JSON body is a 502)."""
    content = await upstream.aread()
    await upstream.aclose()
    exchange.upstream_done()
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        data = error_body(f"backend {backend.name} answered non-JSON", "server_error")
        upstream.status_code = 502
    if upstream.status_code < 400 and isinstance(data, dict):
        data["model"] = backend.name
    exchange.finish(backend, upstream.status_code, data.get("usage"))
    return JSONResponse(
        data, status_code=upstream.status_code, headers={MODEL_HEADER: backend.name}
    )


def relabel(chunk: Any, backend: str, want_usage: bool) -> tuple[bool, dict[str, Any] | None]:
    """Put the backend's name in ``chunk`` (in place); ``(send it, its usage or None)``.

    Example:
        >>> relabel({"model": "m", "choices": [], "usage": {"total_tokens": 3}}, "big", False)
        (False, {'total_tokens': 3})
        >>> chunk = {"model": "m", "choices": [{"text": "x"}]}
        >>> relabel(chunk, "big", False), chunk["model"]
        ((True, None), 'big')
    """
    usage = None
    if isinstance(chunk, dict):
        if chunk.get("usage"):
            usage = chunk["usage"]
            if not want_usage:
                if not chunk.get("choices"):
                    return False, usage  # the usage-only chunk the proxy asked for
                chunk.pop("usage")
        if "model" in chunk:
            chunk["model"] = backend
    return True, usage


async def relay(
    upstream: httpx.Response, backend: Backend, exchange: Exchange, want_usage: bool
) -> AsyncIterator[str]:
    """The backend's stream as the client's (``want_usage``: the client asked for usage);
    logs the request once the stream ends."""
    usage: dict[str, Any] | None = None
    status, error = 200, None
    try:
        async for line in upstream.aiter_lines():
            data = sse_data(line)
            if data is None:
                continue
            if data == "[DONE]":
                yield DONE
                continue
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                continue
            send, seen = relabel(chunk, backend.name, want_usage)
            usage = seen or usage
            if send:
                yield sse(chunk)
    except httpx.HTTPError as err:  # the backend died mid-stream: too late to retry
        exchange.policy.mark_down(backend)
        error = f"{type(err).__name__}: {err}"[:200]
        status = 502
        yield sse(error_body(f"backend {backend.name} failed mid-stream: {error}", "server_error"))
    finally:
        await upstream.aclose()
        exchange.upstream_done()
        exchange.finish(backend, status, usage, **({"error": error} if error else {}))
