"""Which backend answers a request: the router's decision, budget and cascade modes.

A request's ``model`` says how to choose (as RouteLLM's server reads it): ``auto`` or
``router-NAME`` (the router, its saved λ or ``--lambda``), ``router-NAME-X`` (λ, or the
cascade threshold, = X), a backend's name (that backend, no routing, no fallback).
λ mode: ``argmax predicted quality − λ·estimated cost`` (:func:`dynroute.llm.decide.decide`).
Cascade mode: the cheapest backend predicted ≥ the threshold, else the dearest; it pays
for one call, as the prediction reads only the query. Budget mode: a decision may spend
``USD·(n+1) − spent`` (``n`` decided so far); backends estimated above are left out
(none fits: the cheapest answers). Latency (``latency_penalty`` > 0): every routed mode
reads a backend's predicted quality minus ``latency_penalty`` × the seconds a new call is
expected to take there (:class:`~dynroute.serve.backends.Latency`: the proxy's moving
average of its answer times × (1 + calls in flight)), so a slow or overloaded backend is
routed around. docs/serving.md has the rules in full.

Example:
    >>> parse_model_field("router-knn-0.3"), parse_model_field("auto")
    (('knn', 0.3), ('', None))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from dynroute.llm.decide import decide
from dynroute.serve.backends import Backend
from dynroute.serve.breaker import DEFAULT_COOLDOWN_S, DEFAULT_THRESHOLD
from dynroute.serve.errors import ApiError

__all__ = ["Decision", "RoutingPolicy", "parse_model_field"]

ASSUMED_COMPLETION_TOKENS = 256
ROUTER_FIELD = re.compile(r"router-([A-Za-z0-9_]+)(?:-(inf|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?))?")


def parse_model_field(model: str) -> tuple[str, float | None] | None:
    """``(router name or "" for auto, λ or None)``; None when ``model`` is not a router id.
    A number too large for a float (``router-knn-1e999``) is a 400: only the word ``inf``
    asks for an infinite λ (the cheapest backend), never an overflow.

    Example:
        >>> parse_model_field("router-knn-inf")
        ('knn', inf)
        >>> parse_model_field("router-knn-1e999")
        Traceback (most recent call last):
        dynroute.serve.errors.ApiError: model 'router-knn-1e999': ...
    """
    if model == "auto":
        return "", None
    m = ROUTER_FIELD.fullmatch(model)
    if m is None:
        return None
    knob = None if m.group(2) is None else float(m.group(2))
    if knob is not None and not math.isfinite(knob) and m.group(2) != "inf":
        raise ApiError(
            400,
            f"model {model!r}: {m.group(2)} is too large for a number; use a finite "
            f"value, or router-{m.group(1)}-inf for the cheapest backend",
            param="model",
        )
    return m.group(1), knob


@dataclass
class Decision:
    """Where one request goes: ``order[0]`` first, then the fallbacks in order."""

    mode: str  # "lambda", "cascade", "direct" (+ "+budget")
    order: list[Backend]
    knob: float | None = None  # λ or the cascade threshold
    predicted: dict[str, float] = field(default_factory=dict)  # backend -> quality
    estimated: dict[str, float] = field(default_factory=dict)  # backend -> USD
    waits: dict[str, float] = field(default_factory=dict)  # backend -> expected seconds
    reserved: float = 0.0  # USD counted against the budget until the call ends


class RoutingPolicy:
    """Decides for each request (see the module doc).

    Args:
        router: a fitted :class:`dynroute.llm.QueryRouter`.
        backends: with ``router_model`` set (:func:`~dynroute.serve.backends.map_to_router`).
        lam: default λ (None: the router's saved one).
        cascade: cascade mode for every routed request.
        threshold: cascade threshold (None: the cascade router's, else 0.5).
        budget: mean USD per request to stay under (None: no budget).
        cooldown_s: how long an open breaker waits before its backend is probed.
        fault_threshold: consecutive backend faults that open a backend's breaker
            (:mod:`~dynroute.serve.breaker`; an open one is tried only after the others).
        latency_penalty: quality given up per second of expected wait (0: latency and
            load play no part).
    """

    def __init__(
        self,
        router: Any,
        backends: list[Backend],
        *,
        lam: float | None = None,
        cascade: bool = False,
        threshold: float | None = None,
        budget: float | None = None,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        fault_threshold: int = DEFAULT_THRESHOLD,
        latency_penalty: float = 0.0,
    ) -> None:
        if not (math.isfinite(latency_penalty) and latency_penalty >= 0):
            raise ValueError(
                f"--latency-penalty must be a number ≥ 0 (quality per second), "
                f"not {latency_penalty}"
            )
        self.latency_penalty = latency_penalty
        self.router, self.backends = router, backends
        self.by_name = {b.name: b for b in backends}
        self.lam = router.lam if lam is None else lam
        self.cascade = cascade or router.name == "cascade"
        self.threshold = (
            threshold if threshold is not None else float(getattr(router, "threshold", 0.5))
        )
        self.budget, self.cooldown_s = budget, cooldown_s
        for b in backends:
            b.breaker.cooldown_s, b.breaker.threshold = cooldown_s, fault_threshold
        self.columns = [list(router.models).index(b.router_model) for b in backends]
        self.priced = all(b.priced for b in backends)
        self.decided, self.spent = 0, 0.0

    def model_ids(self) -> list[str]:
        """What ``/v1/models`` lists: ``auto``, ``router-NAME``, then every backend."""
        return ["auto", f"router-{self.router.name}", *self.by_name]

    def _unknown(self, model: str) -> ApiError:
        return ApiError(
            404,
            f"model {model!r} does not exist; use one of {self.model_ids()} or "
            f"router-{self.router.name}-<lambda>",
            param="model",
            code="model_not_found",
        )

    def decide(self, model: str, query: str, max_tokens: int | None) -> Decision:
        """The decision for one request (``query``: the text the router reads)."""
        if model in self.by_name:
            b = self.by_name[model]
            est = self._estimate(query, max_tokens)[self.backends.index(b)]
            return self._reserve(Decision("direct", [b], estimated={b.name: est}))
        parsed = parse_model_field(model)
        if parsed is None or parsed[0] not in ("", self.router.name):
            raise self._unknown(model)
        knob = parsed[1]
        pred = self.router.predict([query])[0, self.columns].double()  # [B]
        cost = torch.tensor(self._estimate(query, max_tokens), dtype=torch.float64)
        waits = torch.tensor([b.latency.expected() for b in self.backends], dtype=torch.float64)
        score = pred - self.latency_penalty * waits  # what the modes below rank by
        allowed = torch.ones(len(self.backends), dtype=torch.bool)
        if self.budget is not None:
            allowance = self.budget * (self.decided + 1) - self.spent
            allowed = cost <= allowance
            if not bool(allowed.any()):  # nothing fits: the cheapest answers
                allowed = cost == cost.min()
        if self.cascade:
            threshold = self.threshold if knob is None else knob
            order = self._cascade_order(score, cost, allowed, threshold)
            mode, used = "cascade", threshold
        else:
            lam = self.lam if knob is None else knob
            order = self._lambda_order(score, cost, allowed, lam)
            mode, used = "lambda", lam
        # Backends whose breaker is open go last (still tried when no other answers).
        ranked = [self.backends[i] for i in order]
        admitted = [b.breaker.admits() for b in ranked]
        ranked = [b for b, ok in zip(ranked, admitted, strict=True) if ok] + [
            b for b, ok in zip(ranked, admitted, strict=True) if not ok
        ]
        decision = Decision(
            mode + ("+budget" if self.budget is not None else ""),
            ranked,
            used,
            {b.name: float(pred[i]) for i, b in enumerate(self.backends)},
            {b.name: float(cost[i]) for i, b in enumerate(self.backends)},
            {b.name: float(waits[i]) for i, b in enumerate(self.backends)},
        )
        return self._reserve(decision)

    def _lambda_order(
        self, pred: torch.Tensor, cost: torch.Tensor, allowed: torch.Tensor, lam: float
    ) -> list[int]:
        """Allowed backends best utility first (the first is :func:`decide`'s pick), then
        the others (they answer only when every allowed one failed)."""
        utility = -cost if lam == float("inf") else pred - lam * cost
        first = int(decide(pred[allowed][None], cost[allowed][None], lam)[0])
        first = int(torch.nonzero(allowed)[first])
        rest = sorted(
            (i for i in range(len(pred)) if i != first),
            key=lambda i: (not bool(allowed[i]), -float(utility[i]), float(cost[i])),
        )
        return [first, *rest]

    def _cascade_order(
        self, pred: torch.Tensor, cost: torch.Tensor, allowed: torch.Tensor, threshold: float
    ) -> list[int]:
        """Cheapest allowed backend predicted ≥ threshold (else the dearest allowed), then
        the more expensive ones (escalation on failure), then the cheaper ones."""
        chain = sorted((i for i in range(len(pred)) if allowed[i]), key=lambda i: float(cost[i]))
        stop = next((k for k, i in enumerate(chain) if pred[i] >= threshold), len(chain) - 1)
        others = sorted(
            (i for i in range(len(pred)) if not allowed[i]), key=lambda i: float(cost[i])
        )
        return chain[stop:] + chain[:stop][::-1] + others

    def _estimate(self, query: str, max_tokens: int | None) -> list[float]:
        """USD per backend for this query, before any model runs: with prices for every
        backend, ``prompt_price·prompt tokens + completion_price·max_tokens`` (256 when
        absent) per million tokens, the prompt tokens estimated from the query's
        characters (4 a token, until the backend's answers tell its own rate:
        :class:`~dynroute.serve.backends.TokensPerChar`); else the router's own cost
        model (USD per query)."""
        if self.priced:
            out = max_tokens or ASSUMED_COMPLETION_TOKENS
            chars = len(query)
            return [b.cost(b.tokens_per_char.estimate(chars), out) or 0.0 for b in self.backends]
        est = self.router.estimate_cost([query])[0]
        return [float(est[i]) for i in self.columns]

    def _reserve(self, d: Decision) -> Decision:
        d.reserved = d.estimated.get(d.order[0].name, 0.0)
        self.decided += 1
        self.spent += d.reserved
        return d

    def settle(self, d: Decision, cost: float | None) -> None:
        """Replace the reservation by the realised cost (0 when nothing answered)."""
        real = d.reserved if cost is None else cost
        self.spent += real - d.reserved
        d.reserved = real

    def mark_down(self, b: Backend) -> None:
        """A backend fault of ``b`` (counts towards opening its breaker)."""
        b.breaker.fault()

    def mark_up(self, b: Backend) -> None:
        """``b`` answered: its breaker closes."""
        b.breaker.success()

    def carry_over(self, old: RoutingPolicy) -> None:
        """Take over what ``old`` learnt while serving (a reload forgets nothing): the
        breakers, token rates and latencies of its backends of the same name, the budget's
        running totals."""
        for b in self.backends:
            if b.name in old.by_name:
                b.breaker = old.by_name[b.name].breaker
                b.tokens_per_char = old.by_name[b.name].tokens_per_char
                b.latency = old.by_name[b.name].latency
        self.decided, self.spent = old.decided, old.spent

    def health(self) -> dict[str, Any]:
        """The proxy's fields of ``GET /health``: the router; each backend ``"ok"`` or
        ``"cooling down"`` (its breaker open or half-open); each breaker's state."""
        states = {b.name: b.breaker.state() for b in self.backends}
        return {
            "router": self.router.name,
            "backends": {n: "ok" if s == "closed" else "cooling down" for n, s in states.items()},
            "breakers": {
                b.name: {"state": states[b.name], "faults": b.breaker.faults,
                         "opened": b.breaker.opened}
                for b in self.backends
            },
        }  # fmt: skip
