"""``GET /metrics`` in Prometheus' text format (prometheus-client) for both servers.

Every app has its own registry (two apps in one process never share counters):

- ``dynroute_requests_total{path, status}`` and ``dynroute_request_seconds{path}`` (a
  histogram; a stream counts until its last byte), for every request;
- the proxy's decisions, from the rows of its decision log:
  ``dynroute_routed_total{backend, status}`` (the routed share per backend),
  ``dynroute_tokens_total{backend, kind}`` (prompt / completion) and
  ``dynroute_spend_usd_total{backend}`` (usage × prices, else the estimate);
- the proxy's backends: ``dynroute_proxy_backend_up{backend}`` (1: its circuit breaker is
  closed, 0: open or half-open; :mod:`~dynroute.serve.breaker`);
- ``dynroute_draining`` (1 once SIGTERM asked the server to drain,
  :mod:`~dynroute.serve.drain`) and, on the model server,
  ``dynroute_cancelled_total`` (generations stopped because their client left).

``/metrics`` sits behind the API key like every path but ``/health``: give the scraper
the key (``authorization`` in Prometheus' scrape config).

Example:
    >>> m = ServerMetrics()
    >>> m.observe_decision({"chosen": "small", "status": 200, "cost": 0.002,
    ...                     "prompt_tokens": 12, "completion_tokens": 8})
    >>> text = m.exposition().decode()
    >>> 'dynroute_routed_total{backend="small",status="200"} 1.0' in text
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE_LATEST", "CountRequests", "MeteredLog", "ServerMetrics"]

#: Request latency buckets (seconds): a proxied call is milliseconds, a generation seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Paths counted under their own name; anything else is "other" (no label per 404 URL).
KNOWN_PATHS = frozenset(
    {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}
)


class ServerMetrics:
    """The counters and histograms of one app, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dynroute_requests", "HTTP requests answered", ["path", "status"], registry=r
        )
        self.seconds = Histogram(
            "dynroute_request_seconds", "Time to the last byte", ["path"], buckets=BUCKETS,
            registry=r,
        )  # fmt: skip
        self.routed = Counter(
            "dynroute_routed", "Requests per chosen backend", ["backend", "status"], registry=r
        )
        self.tokens = Counter(
            "dynroute_tokens", "Tokens per backend", ["backend", "kind"], registry=r
        )
        self.spend = Counter("dynroute_spend_usd", "USD spent per backend", ["backend"], registry=r)

    def watch_backends(self, up: Callable[[], dict[str, bool]]) -> None:
        """Export ``dynroute_proxy_backend_up{backend}`` from ``up()`` at each scrape."""
        self.registry.register(BackendsUp(up))

    def watch(self, name: str, doc: str, value: Callable[[], float], counter: bool = False) -> None:
        """Export ``name`` (no labels; a gauge, or a ``counter``) from ``value()`` at each
        scrape."""
        self.registry.register(GaugeOf(name, doc, value, counter))

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        label = path if path in KNOWN_PATHS else "other"
        self.requests.labels(label, str(status)).inc()
        self.seconds.labels(label).observe(seconds)

    def observe_decision(self, row: dict[str, Any]) -> None:
        """Count one row of the proxy's decision log."""
        backend = str(row.get("chosen") or "none")
        self.routed.labels(backend, str(row.get("status"))).inc()
        for kind in ("prompt", "completion"):
            count = row.get(f"{kind}_tokens")
            if isinstance(count, int | float) and math.isfinite(count) and count > 0:
                self.tokens.labels(backend, kind).inc(count)
        cost = row.get("cost")
        if isinstance(cost, int | float) and math.isfinite(cost) and cost > 0:
            self.spend.labels(backend).inc(cost)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class BackendsUp(Collector):
    """``dynroute_proxy_backend_up{backend}``: 1 where the backend's breaker is closed."""

    def __init__(self, up: Callable[[], dict[str, bool]]) -> None:
        self.up = up

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "dynroute_proxy_backend_up", "1: the backend's circuit breaker is closed",
            labels=["backend"],
        )  # fmt: skip
        for name, up in self.up().items():
            gauge.add_metric([name], 1.0 if up else 0.0)
        yield gauge


class GaugeOf(Collector):
    """A gauge (or a counter) read from a function at each scrape."""

    def __init__(
        self, name: str, doc: str, value: Callable[[], float], counter: bool = False
    ) -> None:
        self.name, self.doc, self.value, self.counter = name, doc, value, counter

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        kind = CounterMetricFamily if self.counter else GaugeMetricFamily
        yield kind(self.name, self.doc, value=float(self.value()))


class CountRequests:
    """ASGI middleware: every HTTP response's path, status and time to its last byte."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - started)


class MeteredLog:
    """A decision log whose every row is also counted in ``metrics`` (same interface:
    ``write(row)``, ``close()``)."""

    def __init__(self, log: Any, metrics: ServerMetrics) -> None:
        self.log, self.metrics = log, metrics

    def write(self, row: dict[str, Any]) -> None:
        self.metrics.observe_decision(row)
        self.log.write(row)

    def close(self) -> None:
        self.log.close()
