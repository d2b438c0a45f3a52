"""The routing proxy of ``dynroute llm serve``: the OpenAI API in front of several backends.

Each request is validated (a malformed one is a 400 here, never forwarded), decided by a
:class:`~dynroute.serve.policy.RoutingPolicy`, and forwarded with ``httpx.AsyncClient``
to the chosen backend with its own model id. A backend that cannot be reached, times
out, or answers 5xx/429 is skipped for a cool-down and the request goes to the next in
the decision's order (before any byte reached the client; a stream that breaks midway
ends with an error event). A backend's 4xx is passed back (the request is at fault).
When no backend answers: 503 with OpenAI's error JSON. Every answer carries the backend
that produced it in ``model`` and in the ``x-dynroute-model`` header; every request is
logged (:class:`~dynroute.serve.decisions.DecisionLog`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from dynroute.serve.backends import Backend
from dynroute.serve.decisions import DecisionLog, query_hash
from dynroute.serve.errors import ApiError, install_error_handlers, validation_message
from dynroute.serve.policy import Decision, RoutingPolicy
from dynroute.serve.schemas import ChatCompletionRequest, CompletionRequest, error_body, now

__all__ = ["create_proxy_app"]

MODEL_HEADER = "x-dynroute-model"
#: a backend answering with these is skipped and the next one tried
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def create_proxy_app(
    policy: RoutingPolicy,
    log: DecisionLog | None = None,
    *,
    timeout_s: float = 60.0,
    connect_timeout_s: float = 2.0,
) -> FastAPI:
    """The proxy app (its HTTP client opens and closes with the app's lifespan)."""
    log = log or DecisionLog(None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )
        try:
            yield
        finally:
            await app.state.client.aclose()
            log.close()

    app = FastAPI(title="dynroute llm serve", lifespan=lifespan)
    install_error_handlers(app)
    created = now()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        clock = time.monotonic()
        return {
            "status": "ok",
            "router": policy.router.name,
            "backends": {
                b.name: "cooling down" if b.down_until > clock else "ok" for b in policy.backends
            },
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "dynroute"}
                for m in policy.model_ids()
            ],
        }

    async def parse(request: Request, schema: type[Any]) -> tuple[dict[str, Any], Any]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            return body, schema.model_validate(body)
        except ValidationError as err:
            message, param = validation_message(err.errors())
            raise ApiError(400, message, param=param) from None

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        body, req = await parse(request, CompletionRequest)
        prompt = req.prompt
        query = prompt if isinstance(prompt, str) else "\n".join(map(str, prompt))
        return await forward("/completions", body, req, query)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        body, req = await parse(request, ChatCompletionRequest)
        return await forward("/chat/completions", body, req, req.last_user_text())

    async def forward(path: str, body: dict[str, Any], req: Any, query: str) -> Response:
        start = time.perf_counter()
        decision = policy.decide(req.model, query, req.max_tokens)
        row: dict[str, Any] = {
            "query_sha256": query_hash(query),
            "endpoint": path,
            "requested": req.model,
            "mode": decision.mode,
            "knob": decision.knob,
            "stream": req.stream,
            "estimated_cost": decision.estimated.get(decision.order[0].name),
        }
        attempts: list[dict[str, str]] = []
        client: httpx.AsyncClient = app.state.client
        for backend in decision.order:
            payload = {**body, "model": backend.model}
            if req.stream:  # ask for usage to price the answer; dropped if not wanted
                payload["stream_options"] = {
                    **(body.get("stream_options") or {}),
                    "include_usage": True,
                }
            sent = time.perf_counter()
            try:
                upstream = await client.send(
                    client.build_request(
                        "POST",
                        backend.url(path),
                        content=json.dumps(payload),
                        headers={"content-type": "application/json", **backend.headers()},
                    ),
                    stream=req.stream,
                )
            except httpx.HTTPError as err:  # refused, reset, timed out
                policy.mark_down(backend)
                attempts.append(
                    {"backend": backend.name, "error": f"{type(err).__name__}: {err}"[:200]}
                )
                continue
            if upstream.status_code in RETRY_STATUS:
                if req.stream:
                    await upstream.aclose()
                policy.mark_down(backend)
                attempts.append({"backend": backend.name, "error": f"HTTP {upstream.status_code}"})
                continue
            policy.mark_up(backend)
            row.update(attempts=attempts, upstream_start=sent)
            if req.stream and upstream.status_code == 200:
                return StreamingResponse(
                    relay(upstream, backend, decision, row, start, req.include_usage),
                    media_type="text/event-stream",
                    headers={MODEL_HEADER: backend.name},
                )
            return await answer(upstream, backend, decision, row, start)
        policy.settle(decision, 0.0)
        names = ", ".join(f"{a['backend']} ({a['error']})" for a in attempts)
        finish(row, decision, None, 503, start, attempts=attempts)
        return JSONResponse(
            error_body(
                f"no backend could answer: {names}", "service_unavailable", code="no_backend"
            ),
            status_code=503,
        )

    def finish(
        row: dict[str, Any],
        decision: Decision,
        backend: Backend | None,
        status: int,
        start: float,
        usage: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        cost = None
        if backend is not None and usage:
            cost = backend.cost(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        if backend is not None and cost is None:
            cost = decision.estimated.get(backend.name)
        if backend is not None:
            policy.settle(decision, cost if status < 400 else 0.0)
        row.update(
            chosen=backend.name if backend else None,
            router_model=backend.router_model if backend else None,
            predicted_quality=decision.predicted.get(backend.name) if backend else None,
            cost=cost if status < 400 else 0.0,
            prompt_tokens=(usage or {}).get("prompt_tokens"),
            completion_tokens=(usage or {}).get("completion_tokens"),
            latency_ms=round((time.perf_counter() - start) * 1e3, 3),
            status=status,
            **extra,
        )
        log.write(row)

    async def answer(
        upstream: httpx.Response,
        backend: Backend,
        decision: Decision,
        row: dict[str, Any],
        start: float,
    ) -> Response:
        content = await upstream.aread()
        await upstream.aclose()
        # Time spent waiting for the backend; latency_ms minus this is the proxy's own.
        row["upstream_ms"] = round((time.perf_counter() - row.pop("upstream_start")) * 1e3, 3)
        try:
            data = json.loads(content)
        except json.JSONDecodeError:
            data = error_body(f"backend {backend.name} answered non-JSON", "server_error")
            upstream.status_code = 502
        if upstream.status_code < 400 and isinstance(data, dict):
            data["model"] = backend.name
        finish(row, decision, backend, upstream.status_code, start, data.get("usage"))
        return JSONResponse(
            data, status_code=upstream.status_code, headers={MODEL_HEADER: backend.name}
        )

    async def relay(
        upstream: httpx.Response,
        backend: Backend,
        decision: Decision,
        row: dict[str, Any],
        start: float,
        want_usage: bool,
    ) -> AsyncIterator[str]:
        usage: dict[str, Any] | None = None
        status, error = 200, None
        try:
            async for line in upstream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    yield "data: [DONE]\n\n"
                    continue
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    continue
                if isinstance(chunk, dict):
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                        if not want_usage:
                            if not chunk.get("choices"):
                                continue  # the usage-only chunk we asked for
                            chunk.pop("usage")
                    if "model" in chunk:
                        chunk["model"] = backend.name
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
        except httpx.HTTPError as err:  # the backend died mid-stream: too late to retry
            policy.mark_down(backend)
            error = f"{type(err).__name__}: {err}"[:200]
            status = 502
            message = f"backend {backend.name} failed mid-stream: {error}"
            yield f"data: {json.dumps(error_body(message, 'server_error'))}\n\n"
        finally:
            await upstream.aclose()
            row["upstream_ms"] = round((time.perf_counter() - row.pop("upstream_start")) * 1e3, 3)
            finish(
                row, decision, backend, status, start, usage, **({"error": error} if error else {})
            )

    return app
