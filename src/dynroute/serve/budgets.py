"""Per-key budgets and rate limits of the routing proxy, kept in its database.

A key's limits come from the TOML keys file (:mod:`~dynroute.serve.keyfile`): USD per UTC
day and per UTC month (usage × the prices file), requests and prompt tokens per minute
(the last 60 s). Before a backend is called, :meth:`Budgets.reserve` charges the request's
estimate (the policy's: prompt characters / 4 and ``max_tokens`` at the backend's prices)
to the key in one transaction of :meth:`dynroute.serve.store.Store.reserve`; after the
answer, :meth:`Budgets.settle` replaces it by the real cost. A request refused is a 429 in
OpenAI's shape:

- spend: ``code: "insufficient_quota"`` when what the key spent (reservations included)
  plus this request's estimate passes a USD limit;
- rate: ``code: "rate_limit_exceeded"`` with ``Retry-After`` (seconds until the oldest
  request of the last minute leaves the window).

So two proxies on one database never overspend a key's budget by more than what their
estimates missed (the estimate bounds the completion by ``max_tokens``). A proxy that dies
between the two steps leaves the estimate charged: fail closed, never a free request.

Every key on the command line is in the database (plain keys as ``key-<sha256[:8]>``,
unlimited), so ``dynroute_proxy_key_spend_usd_total{key_name}`` counts each one's spend;
``dynroute_proxy_budget_refusals_total{key_name, code}`` counts the 429s.

Example:
    >>> check_limits(KeyRow("a", "h", usd_per_day=1.0), Usage(0.95, 0.95, 3, 90.0, 10.0),
    ...              Charge(0.1, 30, "small", 30.0)).code
    'insufficient_quota'
    >>> r = check_limits(KeyRow("a", "h", requests_per_minute=3), Usage(0, 0, 3, 90.0, 10.0),
    ...                  Charge(0.1, 30, "small", 30.0))
    >>> r.code, r.retry_after_s
    ('rate_limit_exceeded', 40)
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterable
from pathlib import Path

import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse

from dynroute.serve.errors import ApiError
from dynroute.serve.keyfile import LIMIT_FIELDS, KeySpec, is_toml_key_file, read_key_file
from dynroute.serve.schemas import error_body
from dynroute.serve.store import Charge, KeyRow, Refusal, Reservation, Store, Usage, open_store

__all__ = [
    "BudgetRefused",
    "Budgets",
    "check_limits",
    "client_key_sha256",
    "key_rows",
    "key_sha256",
    "open_proxy_store",
    "plain_key_name",
]


def key_sha256(key: str) -> str:
    """The hex SHA-256 of a key: what the database stores instead of the key.

    Example:
        >>> key_sha256("sk-1")[:16]
        '0f2c10bf3d128c71'
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def client_key_sha256(client: str) -> str | None:
    """The SHA-256 of a request's bearer token, from its
    :func:`~dynroute.serve.limits.client_id` (``key:`` + the header's bytes as latin-1),
    hashed as those bytes, so a non-ASCII key hashes as :func:`key_sha256` hashes it;
    None for a client known by its address only.

    Example:
        >>> client = "key:" + "sk-é".encode().decode("latin-1")  # as the header carries it
        >>> client_key_sha256(client) == key_sha256("sk-é"), client_key_sha256("addr:::1")
        (True, None)
    """
    if not client.startswith("key:"):
        return None
    return hashlib.sha256(client.removeprefix("key:").encode("latin-1")).hexdigest()


def plain_key_name(key: str) -> str:
    """The name of a key given without one (``--api-key``, a plain keys file)."""
    return "key-" + key_sha256(key)[:8]


def key_rows(keys: Iterable[str], key_file: Path | None) -> tuple[list[KeyRow], bool]:
    """``(every accepted key as a database row, whether any has a limit)``: the TOML keys
    file's named keys with their limits, every other key unlimited under
    :func:`plain_key_name`."""
    specs = read_key_file(key_file) if key_file is not None and is_toml_key_file(key_file) else []
    named = {s.key for s in specs}
    specs += [KeySpec(plain_key_name(k), k) for k in sorted(set(keys) - named)]
    rows = [
        KeyRow(s.name, key_sha256(s.key), **{f: getattr(s, f) for f in LIMIT_FIELDS}) for s in specs
    ]
    return rows, any(s.limited for s in specs)


def open_proxy_store(db: str | None, keys: Iterable[str], key_file: Path | None) -> Store | None:
    """The proxy's database with every accepted key in it (:func:`key_rows`), or None when
    there is no ``db`` and no limit. A keys file with a limit and no ``db`` keeps them in
    ``sqlite:///`` the keys file's path with ``.db`` (keys.toml: keys.db), so they persist."""
    rows, limited = key_rows(keys, key_file)
    if db is None and limited and key_file is not None:
        db = "sqlite:///" + str(key_file.resolve().with_suffix(".db"))
    if db is None:
        return None
    store = open_store(db)
    try:
        store.sync_keys(rows)
    except BaseException:
        store.close()
        raise
    return store


def check_limits(key: KeyRow, usage: Usage, charge: Charge) -> Refusal | None:
    """Why ``charge`` may not go to ``key`` given its ``usage`` (None: it may): spend
    limits first (no point retrying soon), then the per-minute ones."""
    for limit, spent, period in (
        (key.usd_per_day, usage.usd_day, "UTC day"),
        (key.usd_per_month, usage.usd_month, "UTC month"),
    ):
        if limit is not None and spent + charge.usd > limit:
            return Refusal(
                "insufficient_quota",
                f"key {key.name!r} is over its budget: ${spent:.6g} spent of ${limit:.6g} per "
                f"{period}, and this request may cost ${charge.usd:.6g}; it resets when the "
                f"{period} ends (or ask for a larger budget, or a smaller max_tokens)",
                key_name=key.name,
            )
    wait = 60 if usage.oldest_in_minute is None else usage.oldest_in_minute + 60.0 - charge.now
    retry = max(1, math.ceil(wait))
    if key.requests_per_minute is not None and usage.requests_minute + 1 > key.requests_per_minute:
        return Refusal(
            "rate_limit_exceeded",
            f"key {key.name!r} is over its rate limit of {key.requests_per_minute:g} requests "
            f"per minute; retry after {retry} s",
            retry,
            key.name,
        )
    tokens = key.prompt_tokens_per_minute
    if tokens is not None and usage.prompt_tokens_minute + charge.prompt_tokens > tokens:
        return Refusal(
            "rate_limit_exceeded",
            f"key {key.name!r} is over its limit of {tokens:g} prompt tokens per minute "
            f"({usage.prompt_tokens_minute:g} used, this request ~{charge.prompt_tokens:g}); "
            f"retry after {retry} s",
            retry,
            key.name,
        )
    return None


class BudgetRefused(Exception):
    """A request over its key's limits (see :meth:`response`)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal

    def response(self) -> JSONResponse:
        """429 in OpenAI's shape (``Retry-After`` on a rate limit)."""
        r = self.refusal
        kind = "insufficient_quota" if r.code == "insufficient_quota" else "rate_limit_error"
        headers = {} if r.retry_after_s is None else {"Retry-After": str(r.retry_after_s)}
        return JSONResponse(error_body(r.message, kind, code=r.code), 429, headers=headers)


class Budgets:
    """The proxy's side of the keys table: reserve before, settle after (module doc);
    its counters go in ``registry`` (the app's ``/metrics``)."""

    def __init__(self, store: Store, registry: CollectorRegistry | None = None) -> None:
        self.store = store
        r = registry or CollectorRegistry()
        self.spend = Counter(
            "dynroute_proxy_key_spend_usd", "USD spent per client key", ["key_name"], registry=r
        )
        self.refusals = Counter(
            "dynroute_proxy_budget_refusals",
            "Requests refused by a key's budget or rate limit",
            ["key_name", "code"],
            registry=r,
        )

    async def reserve(
        self,
        key_digest: str | None,
        usd: float,
        prompt_tokens: float,
        backend: str | None,
        now: float,
    ) -> Reservation | None:
        """Charge the estimate to the key with this SHA-256 (None, or a key the database
        does not hold: no limit, nothing charged); raise :class:`BudgetRefused` when over
        a limit, a 503 :class:`~dynroute.serve.errors.ApiError` when the database does
        not answer (fail closed). The transaction runs in a worker thread."""
        if key_digest is None:
            return None
        charge = Charge(usd if math.isfinite(usd) else 0.0, prompt_tokens, backend, now)
        try:
            done = await anyio.to_thread.run_sync(
                self.store.reserve, key_digest, charge, check_limits
            )
        except SQLAlchemyError as err:
            reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:120]
            print(f"dynroute: --db {self.store.url}: {reason}", file=sys.stderr)
            raise ApiError(
                503,
                "the proxy's budget database does not answer; retry later",
                kind="service_unavailable",
                code="budget_store_unavailable",
            ) from None
        if isinstance(done, Refusal):
            self.refusals.labels(done.key_name, done.code).inc()
            raise BudgetRefused(done)
        return done

    def settle(
        self,
        reservation: Reservation,
        usd: float | None,
        prompt_tokens: object,
        completion_tokens: object,
        backend: str | None,
    ) -> None:
        """The request's real cost (None: keep the estimate) replaces its reservation
        (queued to the database's writer; returns at once)."""
        tokens = [t if isinstance(t, int | float) and math.isfinite(t) else None
                  for t in (prompt_tokens, completion_tokens)]  # fmt: skip
        if usd is not None and (not math.isfinite(usd) or usd < 0):
            usd = None
        if usd is None:
            usd = reservation.usd
        self.spend.labels(reservation.key_name).inc(usd)
        self.store.settle(reservation, usd, tokens[0], tokens[1], backend)
