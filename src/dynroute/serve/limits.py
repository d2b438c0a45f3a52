"""Concurrent requests per client: a client over ``max_concurrent`` gets a 429.

A client is its API key when the server has keys (:mod:`~dynroute.serve.auth`), else its
address. The answer is OpenAI's rate-limit error (``code: "rate_limit_exceeded"``) with
``Retry-After: 1``, which the OpenAI client honours. ``/health`` and ``/metrics`` are not
counted. A request holds its slot until its last byte is sent (a stream: to its end).

Example:
    >>> client_id({"headers": [(b"authorization", b"Bearer k1")], "client": ("1.2.3.4", 5)})
    'key:k1'
    >>> client_id({"headers": [], "client": ("1.2.3.4", 5)})
    'addr:1.2.3.4'
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dynroute.serve.schemas import error_body

__all__ = ["LimitConcurrency", "client_id"]

#: Paths never limited (probes and scrapers).
UNLIMITED_PATHS = frozenset({"/health", "/metrics"})


def client_id(scope: Scope) -> str:
    """Who a request comes from: its bearer token, else its address."""
    headers = dict(scope.get("headers") or ())
    scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
    if scheme.lower() == b"bearer" and token.strip():
        return "key:" + token.strip().decode("latin-1")
    client: Any = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"


class LimitConcurrency:
    """ASGI middleware: at most ``max_concurrent`` requests in flight per client."""

    def __init__(self, app: ASGIApp, max_concurrent: int) -> None:
        self.app, self.max_concurrent = app, max_concurrent
        self.in_flight: Counter[str] = Counter()  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        who = client_id(scope)
        if self.in_flight[who] >= self.max_concurrent:
            body = error_body(
                f"too many concurrent requests: at most {self.max_concurrent} per client; "
                "retry when one has finished",
                "rate_limit_error",
                code="rate_limit_exceeded",
            )
            response = JSONResponse(body, status_code=429, headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return
        self.in_flight[who] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[who] -= 1
            if not self.in_flight[who]:
                del self.in_flight[who]
