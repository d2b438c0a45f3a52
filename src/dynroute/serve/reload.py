"""Reloading the proxy's router without a restart: ``POST /admin/reload`` or SIGHUP.

Both run the zero-argument ``build`` the command gave :func:`enable_reload` (it re-reads
the router folder and the prices file the proxy was started with) off the event loop and
swap the app's policy: requests already decided keep the old one to their end, the next
ones get the new one; each backend's circuit breaker and the budget's running totals
carry over (:meth:`~dynroute.serve.policy.RoutingPolicy.carry_over`). A folder that fails
to load changes nothing: the old policy keeps serving, the reason goes to the log and to
the admin's answer (a 422, ``code: "reload_failed"``).

``POST /admin/reload`` needs the admin key (``--admin-key KEY`` or ``DYNROUTE_ADMIN_KEY``,
as ``Authorization: Bearer KEY``; a client key is not enough: 401); a proxy started
without one answers 403 there (SIGHUP still works: it needs the right to signal the
process).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from dynroute.serve.auth import ADMIN_KEY_ENV_VAR, bearer_token
from dynroute.serve.errors import ApiError
from dynroute.serve.policy import RoutingPolicy
from dynroute.serve.schemas import now
from dynroute.serve.state import model_card

__all__ = ["Reloader", "enable_reload", "router"]

log = logging.getLogger(__name__)

router = APIRouter()


class Reloader:
    """Swaps ``app.state.policy`` for ``build()``'s (one reload at a time); the app's
    ``/health`` and ``/v1/models`` follow it."""

    def __init__(self, app: FastAPI, build: Callable[[], RoutingPolicy]) -> None:
        self.app, self.build = app, build
        self.lock = asyncio.Lock()
        self.reloads = 0

    async def __call__(self, source: str) -> dict[str, Any]:
        """Reload (``source``: what asked, for the log); ``{"reloaded": bool, ...}``."""
        async with self.lock:
            try:
                new = await asyncio.to_thread(self.build)
            except Exception as err:  # any failure leaves the old policy serving
                reason = f"{type(err).__name__}: {err}"[:500]
                log.error("reload (%s) failed, still serving the old router: %s", source, reason)
                print(f"reload ({source}) failed: {reason}", flush=True)
                return {"reloaded": False, "error": reason}
            state = self.app.state
            new.carry_over(state.policy)
            state.policy, state.health = new, new.health
            created = now()
            state.model_cards = [model_card(m, created) for m in new.model_ids()]
            self.reloads += 1
            print(f"reload ({source}): routing with {new.router.name}", flush=True)
            return {"reloaded": True, "router": new.router.name, "reloads": self.reloads}


def enable_reload(
    app: FastAPI, build: Callable[[], RoutingPolicy], admin_key: str | None = None
) -> Reloader:
    """Let ``POST /admin/reload`` (behind ``admin_key``) and SIGHUP
    (:func:`~dynroute.serve.runner.run_app`) rebuild the app's policy with ``build``."""
    reloader = Reloader(app, build)
    app.state.reload, app.state.admin_key = reloader, admin_key
    app.include_router(router)
    return reloader


@router.post("/admin/reload", include_in_schema=False)
async def reload_route(request: Request) -> JSONResponse:
    """Reload the router (module doc): 200 with what serves now, or 422 with why not."""
    key: str | None = request.app.state.admin_key
    if not key:
        raise ApiError(
            403,
            "admin endpoints are off: start the proxy with --admin-key KEY (or set "
            f"{ADMIN_KEY_ENV_VAR}), or send it SIGHUP to reload",
            kind="permission_error",
        )
    if not hmac.compare_digest(bearer_token(request.headers), key.encode()):
        raise ApiError(
            401,
            "missing or incorrect admin key: send 'Authorization: Bearer ADMIN_KEY'",
            code="invalid_api_key",
        )
    result = await request.app.state.reload("POST /admin/reload")
    if not result["reloaded"]:
        message = f"the router did not load, the old one still serves: {result['error']}"
        raise ApiError(422, message, code="reload_failed")
    return JSONResponse(result)
