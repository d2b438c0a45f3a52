"""One request through the proxy: its decision and its row of the decision log (the
fields: :mod:`dynroute.serve.decisions`), written once by :meth:`Exchange.finish`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dynroute.serve.backends import Backend
from dynroute.serve.decisions import DecisionLog, query_hash
from dynroute.serve.policy import Decision, RoutingPolicy
from dynroute.serve.schemas import GenerationParams

__all__ = ["Exchange"]


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
        """Decide where the request goes (``query``: the text the router reads).

        Raises:
            ApiError: 404 for a ``model`` that is neither a router id nor a backend.
        """
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
