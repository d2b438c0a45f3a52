"""The proxy's backend probes: a background task that probes each half-open breaker
(:mod:`~dynroute.serve.breaker`) and closes or reopens it, and the
``dynroute_proxy_backend_up{backend}`` gauge of ``GET /metrics`` (1: its breaker is
closed). :func:`probing` runs both for the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from dynroute.serve.backends import Backend

__all__ = [
    "PROBE_EVERY_S",
    "PROBE_TIMEOUT_S",
    "probe_forever",
    "probe_once",
    "probe_round",
    "probing",
]

log = logging.getLogger(__name__)

#: how often the probe loop looks for half-open breakers (seconds)
PROBE_EVERY_S = 0.5
#: how long a probe waits for a backend's answer (seconds)
PROBE_TIMEOUT_S = 2.0


@asynccontextmanager
async def probing(app: Any) -> AsyncIterator[None]:
    """For the proxy app's lifespan (after ``app.state.client`` is open): probe the
    backends of ``app.state.policy`` (read anew each round: a reload changes it) and show
    their breakers on ``app.state.metrics``."""

    def backends() -> Sequence[Backend]:
        return list(app.state.policy.backends)

    app.state.metrics.watch_backends(
        lambda: {b.name: b.breaker.state() == "closed" for b in backends()}
    )
    task = asyncio.create_task(probe_forever(backends, app.state.client))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def probe_once(client: httpx.AsyncClient, backend: Backend) -> bool:
    """Whether ``backend`` answers ``GET /health`` (or, where that is a 404,
    ``GET /v1/models``) with a 2xx within :data:`PROBE_TIMEOUT_S`."""
    try:
        for path in ("/health", "/v1/models"):
            r = await client.get(
                backend.base_url + path, headers=backend.headers(), timeout=PROBE_TIMEOUT_S
            )
            if r.status_code != 404:
                return r.is_success
    except httpx.HTTPError:
        return False
    return False


async def probe_forever(
    backends: Callable[[], Sequence[Backend]], client: httpx.AsyncClient
) -> None:
    """Probe each half-open backend of ``backends()`` (read anew each round: a reload
    changes them) every :data:`PROBE_EVERY_S`, closing or reopening its breaker; runs
    until cancelled."""
    while True:
        await asyncio.sleep(PROBE_EVERY_S)
        try:
            await probe_round(backends(), client)
        except Exception:  # a probe round must never end the probing
            log.exception("a round of backend probes failed")


async def probe_round(backends: Sequence[Backend], client: httpx.AsyncClient) -> None:
    """Probe each half-open backend once, closing or reopening its breaker."""
    due = [b for b in backends if b.breaker.state() == "half_open"]
    answers = await asyncio.gather(*(probe_once(client, b) for b in due))
    for b, up in zip(due, answers, strict=True):
        if up:
            b.breaker.success()
            log.warning("backend %s answers its probe: back in rotation", b.name)
        elif b.breaker.state() == "half_open":  # no request reopened it meanwhile
            b.breaker.fault()
