"""``POST /v1/completions`` and ``POST /v1/chat/completions`` of the routing proxy.

A request is checked before anything is decided (:func:`read_request`): a body over
``--max-body-bytes`` is a 413; a Content-Type other than JSON is a 415; a body that is
not a JSON object of the endpoint's schema, nests deeper than :data:`MAX_DEPTH`, holds a
non-finite number, a number beyond ±(2^63 − 1) or a lone UTF-16 surrogate, or asks for
a ``max_tokens`` over ``--max-tokens-cap`` is a 400 naming the field; no backend sees it.
A valid request is decided (:meth:`Exchange.begin`); with ``--db``, its estimated cost is
charged to the client's key first (:mod:`~dynroute.serve.budgets`: over a budget or a rate
limit, a 429 and no backend called); then it is sent as the client sent it
(unknown fields included), with each backend's own model id, to the decision's backends
in order. A backend fault (:func:`backend_fault`: unreachable, timed out, a 5xx, 408 or
429) cools that backend down (:meth:`~dynroute.serve.policy.RoutingPolicy.mark_down`)
and the next one is tried, before any byte reached the client; any other 4xx is the
request's fault: passed back as it is, no retry, no cool-down (one client's bad request
costs no other client anything).
When none answers: 503 naming each failure. An answer carries the backend's name in
``model`` (in each streamed chunk too) and in the ``x-dynroute-model`` header. A stream is
always asked for ``usage`` (to price it; a client that did not ask does not get it); a
backend that dies mid-stream is cooled down and the stream ends with an error event.
Each request is one row of the decision log, written by :meth:`Exchange.finish`, with the
answer's ``id`` (one is given to an answer without one) as ``response_id``; the query's
text too with ``--log-queries``. ``POST /v1/feedback`` (:func:`feedback`) scores such an
answer: a feedback row of the same log, which ``dynroute llm update`` learns from.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from dynroute.common.jsonfile import finite_or_none
from dynroute.serve.backends import Backend
from dynroute.serve.budgets import BudgetRefused, Budgets, client_key_sha256
from dynroute.serve.decisions import FEEDBACK, REMEMBERED, DecisionLog, query_hash
from dynroute.serve.errors import ApiError, Body, LimitedRequest, parse_body
from dynroute.serve.limits import client_id
from dynroute.serve.policy import ASSUMED_COMPLETION_TOKENS, Decision, RoutingPolicy
from dynroute.serve.schemas import (
    DONE,
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    GenerationParams,
    error_body,
    new_id,
    sse,
    sse_data,
)
from dynroute.serve.state import client_of, decision_log, policy_of
from dynroute.serve.store import Reservation

__all__ = [
    "MAX_DEPTH",
    "MAX_NUMBER",
    "MODEL_HEADER",
    "Exchange",
    "ProxyLimits",
    "backend_fault",
    "check_values",
    "feedback",
    "read_request",
    "router",
]

router = APIRouter()

MODEL_HEADER = "x-dynroute-model"
#: how deep a request body may nest (OpenAI's bodies nest a few levels, tool schemas ~10)
MAX_DEPTH = 64
#: the largest number a body may hold: a signed 64-bit integer, what every backend parses
MAX_NUMBER = 2**63 - 1
SURROGATE = re.compile(r"[\ud800-\udfff]")


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> Response:
    body, req = await read_request(request, CompletionRequest)
    return await forward(request, "/completions", body, req, req.prompt_text())


@router.post("/v1/chat/completions", response_model=None)
async def chat(request: Request) -> Response:
    body, req = await read_request(request, ChatCompletionRequest)
    return await forward(request, "/chat/completions", body, req, req.last_user_text())


@router.post("/v1/feedback", response_model=None)
async def feedback(request: Request) -> Response:
    """Score an answer the proxy gave: ``{"id": <its id>, "score": <0 to 1>}`` (``"model"``:
    a router model or backend the score is about, when not the one that answered). A
    feedback row goes to the decision log (flushed at once); 200 with it. 404: an id this
    proxy's log does not hold (or no ``--log`` / ``--db``); 422: a score not in [0, 1], an
    unknown ``model``; 400, 413, 415 as for the other routes."""
    check_media_type(request)
    try:
        body, req = await parse_body(
            LimitedRequest(request, limits_of(request).max_body_bytes), FeedbackRequest
        )
    except ApiError as err:
        if err.param in ("score", "model"):
            err.status = 422
        raise
    check_values(body)
    policy, log = policy_of(request), feedback_log(request)
    if req.model is not None and req.model not in {*policy.router.models, *policy.by_name}:
        known = ", ".join(sorted({*policy.router.models, *policy.by_name}))
        raise ApiError(422, f"model: {req.model!r} is none of {known}", param="model")
    if not log.keeps:
        raise ApiError(
            404, "this proxy keeps no decision log: start it with --log FILE (and "
            "--log-queries to learn from feedback) or --db", param="id", code="no_decision_log",
        )  # fmt: skip
    row = log.feedback(req.id, req.score, req.model)
    if row is None:
        raise ApiError(
            404, f"no answer with id {req.id!r} in this proxy's decision log (the id of a "
            f"response this proxy returned; it keeps the last {REMEMBERED:,})",
            param="id", code="unknown_response_id",
        )  # fmt: skip
    return JSONResponse({"object": FEEDBACK, **row})


def feedback_log(request: Request) -> DecisionLog:
    """The proxy's own :class:`DecisionLog` (``app.state.feedback_log``; the
    ``decision_log`` of :mod:`~dynroute.serve.state` also counts each row as a decision)."""
    log = getattr(request.app.state, "feedback_log", None)
    return log if isinstance(log, DecisionLog) else DecisionLog(None)


def backend_fault(status: int) -> bool:
    """Whether a backend's answer with ``status`` is the backend's fault (a 5xx, a timeout,
    its rate limit): then it cools down and the next backend is tried. Any other 4xx is
    the request's: passed back, as every backend would refuse it too.

    Example:
        >>> [backend_fault(s) for s in (200, 400, 404, 408, 429, 500, 503)]
        [False, False, False, True, True, True, True]
    """
    return status >= 500 or status in (408, 429)


@dataclass(frozen=True)
class ProxyLimits:
    """What one request to the proxy may ask for (``app.state.proxy_limits``).

    Attributes:
        max_body_bytes: largest request body (more: 413, ``--max-body-bytes``).
        max_tokens_cap: most tokens one answer may ask for (``--max-tokens-cap``; more: a
            400 naming it; a chat request that names none is sent with this many, so no
            request can spend more). None: no cap.
    """

    max_body_bytes: int = 1_000_000
    max_tokens_cap: int | None = None


def limits_of(request: Request) -> ProxyLimits:
    limits = getattr(request.app.state, "proxy_limits", None)
    return limits if isinstance(limits, ProxyLimits) else ProxyLimits()


async def read_request(request: Request, schema: type[Body]) -> tuple[dict[str, Any], Body]:
    """``(the JSON object as sent, the same validated by schema)``, or the 4xx of the module
    doc (413: over ``--max-body-bytes``; 415: not JSON; 400: not valid, too deep, a bad
    number or string, ``max_tokens`` over ``--max-tokens-cap``)."""
    check_media_type(request)
    limits = limits_of(request)
    body, req = await parse_body(LimitedRequest(request, limits.max_body_bytes), schema)
    check_values(body)
    cap = limits.max_tokens_cap
    if cap is not None:
        asked = getattr(req, "max_tokens", None)
        if asked is None:  # the backend's default could be the whole context: pay for cap
            body["max_tokens"] = req.max_tokens = cap
        elif asked > cap:
            raise ApiError(
                400,
                f"max_tokens {asked} is over this proxy's cap of {cap} (--max-tokens-cap); "
                "ask for fewer",
                param="max_tokens",
                code="max_tokens_too_large",
            )
    return body, req


def check_media_type(request: Request) -> None:
    """A 415 for a body sent as anything but JSON (no Content-Type: read as JSON)."""
    kind = request.headers.get("content-type")
    media = (kind or "").partition(";")[0].strip().lower()
    if kind and media != "application/json" and not media.endswith("+json"):
        raise ApiError(
            415,
            f"Content-Type {kind[:80]!r} is not JSON; send the body as application/json",
            code="unsupported_media_type",
        )


def check_values(body: Any) -> None:
    """Raise a 400 :class:`ApiError` naming the first field of ``body`` (parsed JSON) that
    nests deeper than :data:`MAX_DEPTH`, is a non-finite number or one beyond
    ±:data:`MAX_NUMBER`, or holds a lone surrogate (not Unicode: no backend can encode it).
    Iterative, so any depth the JSON parser accepted is safe here.

    Example:
        >>> check_values({"model": "auto", "messages": [{"content": "hi"}], "n": 1})
        >>> check_values({"max_tokens": 10**400})
        Traceback (most recent call last):
        dynroute.serve.errors.ApiError: max_tokens: a 1329-bit int is out of range (|x| <= 2^63 - 1)
        >>> check_values({"stop": ["a", chr(0xD800)]})
        Traceback (most recent call last):
        dynroute.serve.errors.ApiError: stop.1 holds a lone UTF-16 surrogate ...
    """
    stack: list[tuple[Any, str, int]] = [(body, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"the request body nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                check_text(key, f"a key of {path or 'the body'}", path)
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str):
            check_text(value, path, path)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ApiError(400, f"{path}: must be a finite number", param=path)
        elif isinstance(value, int | float) and abs(value) > MAX_NUMBER:
            # str() of an int over 4,300 digits raises: say how big it is instead
            shown = str(value) if isinstance(value, float) else f"a {value.bit_length()}-bit int"
            raise ApiError(400, f"{path}: {shown} is out of range (|x| <= 2^63 - 1)", param=path)


def check_text(text: str, what: str, param: str) -> None:
    found = SURROGATE.search(text)
    if found:
        code = f"U+{ord(found.group()):04X}"
        raise ApiError(
            400,
            f"{what} holds a lone UTF-16 surrogate ({code}), which is not Unicode text; "
            "send each surrogate pair whole, or valid UTF-8",
            param=param or None,
        )


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
    if backend_fault(upstream.status_code):
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
    if feedback_log(request).log_queries:  # --log-queries: what `llm update` learns from
        exchange.row["query"] = query
    budgets: Budgets | None = getattr(request.app.state, "budgets", None)
    if budgets is not None:  # the key's budget and rate limits, before any backend is called
        try:
            await exchange.reserve(budgets, client_id(request.scope), query, req.max_tokens)
        except (BudgetRefused, ApiError) as refused:  # over a limit; the database is down
            policy.settle(exchange.decision, 0.0)
            return refused.response()
    attempts: list[dict[str, str]] = []
    for backend in exchange.decision.order:
        payload = backend_payload(body, backend, req.stream)
        sent = time.perf_counter()
        backend.latency.started()
        try:
            upstream = await send(client, backend, path, payload, req.stream)
        except BaseException:  # cancelled (the client left): nothing to learn, load drops
            backend.latency.done(None)
            raise
        if isinstance(upstream, str):
            backend.latency.done(None)
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
    budgets: Budgets | None = None  # with --db: the key's charge, settled by finish
    reservation: Reservation | None = None
    query_chars: int = 0  # what the prompt-token estimate of the next request learns from

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
            "expected_wait_s": decision.waits.get(decision.order[0].name),
        }
        return cls(policy, log, decision, row, start, query_chars=len(query))

    async def reserve(
        self, budgets: Budgets, client: str, query: str, max_tokens: int | None
    ) -> None:
        """Charge the first choice's cost to the client's key (``client``:
        :func:`~dynroute.serve.limits.client_id`) at most it can be: ``max_tokens`` (256
        when absent) and the prompt's tokens at the backend's learnt rate, one a character
        before it is learnt (:meth:`~dynroute.serve.backends.TokensPerChar.bound`), so the
        key's limit holds (its prompt tokens a minute count the estimate, settled to the
        real count after); :class:`BudgetRefused` when over."""
        first, chars = self.decision.order[0], len(query)
        usd = first.cost(
            first.tokens_per_char.bound(chars), max_tokens or ASSUMED_COMPLETION_TOKENS
        )
        if usd is None:  # unpriced: the router's own cost model
            usd = self.decision.estimated.get(first.name) or 0.0
        self.budgets = budgets
        digest = client_key_sha256(client)
        started = time.perf_counter()
        prompt = first.tokens_per_char.estimate(chars)
        self.reservation = await budgets.reserve(digest, usd, prompt, first.name, time.time())
        if self.reservation is not None:  # the key, and how long its check took
            self.row["key"] = self.reservation.key_name
            self.row["budget_ms"] = round((time.perf_counter() - started) * 1e3, 3)

    def upstream_done(self, backend: Backend, ok: bool = True) -> None:
        """Note how long the backend took (``latency_ms`` minus this is the proxy's own)
        and teach its :class:`~dynroute.serve.backends.Latency` (not when it failed)."""
        seconds = time.perf_counter() - self.upstream_start
        self.row["upstream_ms"] = round(seconds * 1e3, 3)
        backend.latency.done(seconds if ok else None)

    def finish(
        self,
        backend: Backend | None,
        status: int,
        usage: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        """Settle the cost (usage × prices, else the estimate; 0 for an error) and log
        (a ``usage`` that is not a JSON object counts as none)."""
        decision = self.decision
        usage = usage if isinstance(usage, dict) else None
        cost = None
        if backend is not None and usage:
            cost = backend.cost(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            backend.tokens_per_char.observe(self.query_chars, usage.get("prompt_tokens"))
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
        if self.budgets is not None and self.reservation is not None:
            self.budgets.settle(
                self.reservation, self.row["cost"], self.row["prompt_tokens"],
                self.row["completion_tokens"], backend.name if backend else None,
            )  # fmt: skip
        self.log.write(self.row)


async def answer(upstream: httpx.Response, backend: Backend, exchange: Exchange) -> Response:
    """The backend's whole answer (its status kept; a body that is not a JSON object is a
    502; a non-finite number in it becomes null, as a client's JSON parser needs)."""
    content = await upstream.aread()
    await upstream.aclose()
    exchange.upstream_done(backend)
    try:
        data = finite_or_none(json.loads(content))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, a huge number
        data = None
    if not isinstance(data, dict):
        data = error_body(f"backend {backend.name} answered no JSON object", "server_error")
        upstream.status_code = 502
    if upstream.status_code < 400 and isinstance(data, dict):
        data["model"] = backend.name
        if not isinstance(data.get("id"), str) or not data["id"]:  # feedback needs one
            data["id"] = new_id("chatcmpl" if "chat" in exchange.row["endpoint"] else "cmpl")
        exchange.row["response_id"] = data["id"]
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
                chunk = finite_or_none(json.loads(data))
            except (ValueError, RecursionError):
                continue
            send, seen = relabel(chunk, backend.name, want_usage)
            usage = seen or usage
            if isinstance(chunk, dict) and isinstance(chunk.get("id"), str) and chunk["id"]:
                exchange.row.setdefault("response_id", chunk["id"])  # the stream's id
            if send:
                yield sse(chunk)
    except httpx.HTTPError as err:  # the backend died mid-stream: too late to retry
        exchange.policy.mark_down(backend)
        error = f"{type(err).__name__}: {err}"[:200]
        status = 502
        yield sse(error_body(f"backend {backend.name} failed mid-stream: {error}", "server_error"))
    finally:
        await upstream.aclose()
        exchange.upstream_done(backend, ok=error is None)
        exchange.finish(backend, status, usage, **({"error": error} if error else {}))
