"""Draining on SIGTERM, for both servers: new requests get a 503, the ones in flight finish.

:func:`~dynroute.serve.runner.run_app` turns the first SIGTERM into :meth:`Drain.start`:
from then on :class:`RefuseWhenDraining` answers every new request with a 503 in OpenAI's
error shape (``code: "server_draining"``, ``Retry-After: 1``, ``Connection: close``) and
``GET /health`` with 503 ``{"status": "draining"}`` (a load balancer takes the server out),
while the requests already in flight, streams included, run to their end. Once none is
left, or ``--drain-timeout`` seconds have passed, the server closes its socket and exits 0.
A second SIGTERM, or Ctrl-C, stops at once.

Example:
    >>> drain = Drain()
    >>> drain.draining, drain.done()
    (False, False)
    >>> drain.start(timeout_s=30.0); drain.draining, drain.done()
    (True, True)
"""

from __future__ import annotations

import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dynroute.serve.schemas import error_body

__all__ = ["DEFAULT_DRAIN_TIMEOUT_S", "Drain", "RefuseWhenDraining"]

#: seconds a drain waits for the requests in flight (a long stream of a big model: ~30 s)
DEFAULT_DRAIN_TIMEOUT_S = 30.0


class Drain:
    """Whether the server drains, and how many requests it still runs."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0  # one event loop: no lock needed
        self.deadline = float("inf")

    def start(self, timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        """Refuse new requests from now on; :meth:`done` after ``timeout_s`` at the latest."""
        self.draining = True
        self.deadline = time.monotonic() + timeout_s

    def done(self) -> bool:
        """Draining, and nothing is left in flight (or the drain timed out)."""
        return self.draining and (self.in_flight == 0 or time.monotonic() >= self.deadline)


class RefuseWhenDraining:
    """ASGI middleware: counts the requests in flight; once draining, answers new ones
    with a 503 (``/health``: ``{"status": "draining"}``)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            headers = {"Retry-After": "1", "Connection": "close"}
            if scope["path"] == "/health":
                body = {"status": "draining", "in_flight": self.drain.in_flight}
            else:
                body = error_body(
                    "the server is shutting down and takes no new requests; retry, or send "
                    "it to another replica",
                    "service_unavailable",
                    code="server_draining",
                )
            await JSONResponse(body, status_code=503, headers=headers)(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
