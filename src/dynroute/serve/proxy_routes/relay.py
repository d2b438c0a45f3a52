"""A backend's answer back to the client, relabelled with the backend's name.

The name goes in ``model`` (of each streamed chunk too) and in the ``x-dynroute-model``
header. The proxy always asks a stream for ``usage`` (to price it); a client that did not
ask does not get it. A backend that dies mid-stream is cooled down and the stream ends
with an error event (too late to switch backends).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse

from dynroute.serve.backends import Backend
from dynroute.serve.proxy_routes.exchange import Exchange
from dynroute.serve.schemas import DONE, error_body, sse, sse_data

__all__ = ["MODEL_HEADER", "answer", "relabel", "stream_back"]

MODEL_HEADER = "x-dynroute-model"


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


def stream_back(
    upstream: httpx.Response, backend: Backend, exchange: Exchange, want_usage: bool
) -> StreamingResponse:
    """The backend's stream as the client's (``want_usage``: the client asked for usage)."""
    return StreamingResponse(
        relay(upstream, backend, exchange, want_usage),
        media_type="text/event-stream",
        headers={MODEL_HEADER: backend.name},
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
    """The events of :func:`stream_back`; logs the request once the stream ends."""
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
