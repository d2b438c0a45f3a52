"""The proxy's backends: where each model is served, what it costs, which router model it is.

A backend is named on the command line (``--backend NAME=URL``) and optionally described
in a TOML or JSON file (``--prices FILE``: ``[backends.NAME]`` tables with the keys of
:data:`FIELDS`; docs/serving.md shows one). The router decides among its own model names;
every backend must map to one, by its NAME or its ``router_model``.

Example:
    >>> b = parse_backend_args(["small=http://127.0.0.1:8001/v1"], {})
    >>> b[0].name, b[0].base_url, b[0].cost(1000, 1000)
    ('small', 'http://127.0.0.1:8001', None)
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynroute.serve.breaker import Breaker

__all__ = [
    "Backend",
    "Latency",
    "TokensPerChar",
    "load_backend_file",
    "map_to_router",
    "parse_backend_args",
]

FIELDS = {"url", "model", "router_model", "prompt_price", "completion_price", "api_key_env"}


@dataclass
class TokensPerChar:
    """How many prompt tokens a backend counts per character of the text the router reads,
    learnt from its answers' ``usage`` (a ratio of sums; chat templates and system prompts
    included). Until :data:`MIN_CHARS` characters were seen: :data:`DEFAULT`, the usual
    4 characters per token. The proxy prices a request before sending it with this, so a
    tokenizer that counts more tokens than characters/4 does not leave budgets short;
    what a key's budget reserves (:meth:`bound`) assumes one token a character until then.

    Example:
        >>> rate = TokensPerChar()
        >>> rate.value, rate.estimate(400), rate.bound(400)
        (0.25, 100.0, 400.0)
        >>> rate.observe(4000, 3000); rate.estimate(400), rate.bound(400)
        (300.0, 300.0)
    """

    DEFAULT = 0.25
    UPPER = 1.0  # a byte-level tokenizer's most on ASCII text
    MIN_CHARS = 1000
    chars: float = 0.0
    tokens: float = 0.0

    @property
    def value(self) -> float:
        return self.tokens / self.chars if self.chars >= self.MIN_CHARS else self.DEFAULT

    def observe(self, chars: int, tokens: Any) -> None:
        """Count one answer: ``chars`` of query text, ``tokens`` its usage's prompt tokens
        (ignored unless a non-negative int: a backend's odd ``usage`` is no crash)."""
        if isinstance(tokens, int) and not isinstance(tokens, bool) and 0 <= tokens < 2**53:
            self.chars += chars
            self.tokens += tokens

    def estimate(self, chars: int) -> float:
        """Prompt tokens expected for ``chars`` characters."""
        return chars * self.value

    def bound(self, chars: int) -> float:
        """Prompt tokens to reserve for: the learnt rate, else :data:`UPPER` a character."""
        return chars * (self.value if self.chars >= self.MIN_CHARS else self.UPPER)


@dataclass
class Latency:
    """A backend's speed and load as the proxy sees them: an exponential moving average
    of the seconds its calls took (sent → last byte; ``alpha`` the weight of the newest)
    and how many calls are in flight now. :meth:`expected` is what a new call should
    wait: the average × (1 + calls in flight), the queue of a backend that answers one
    at a time (a backend that batches waits less; the penalty is a preference, not a
    promise). Before the first answer it is 0: a new backend is tried, not avoided.

    Example:
        >>> lat = Latency()
        >>> lat.expected()
        0.0
        >>> lat.started(); lat.done(2.0); lat.started(); lat.expected()
        4.0
        >>> lat.done(1.0); round(lat.seconds, 2), lat.in_flight
        (1.8, 0)
    """

    alpha: float = 0.2
    seconds: float | None = None
    in_flight: int = 0

    def started(self) -> None:
        """A call was sent."""
        self.in_flight += 1

    def done(self, seconds: float | None) -> None:
        """A call ended after ``seconds`` (None: it failed; only the load is updated)."""
        self.in_flight = max(0, self.in_flight - 1)
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            last = seconds if self.seconds is None else self.seconds
            self.seconds = last + self.alpha * (seconds - last)

    def expected(self) -> float:
        """Seconds a new call should take, queue included (0 before any answer)."""
        return 0.0 if self.seconds is None else self.seconds * (1 + self.in_flight)


@dataclass
class Backend:
    """One OpenAI-compatible server the proxy forwards to.

    Attributes:
        name: the name clients and the decision log use.
        base_url: scheme://host:port[/prefix], without the trailing ``/v1``.
        model: the model id the backend expects in ``model``.
        router_model: the router's name for this model (None: reachable only by name).
        prompt_price, completion_price: USD per million tokens (None: unknown).
        api_key: sent as a bearer token when set.
        breaker: its circuit breaker (:mod:`~dynroute.serve.breaker`).
        tokens_per_char: its prompt tokens per character, learnt from its answers.
        latency: its answer time and calls in flight, seen by the proxy.
    """

    name: str
    base_url: str
    model: str
    router_model: str | None = None
    prompt_price: float | None = None
    completion_price: float | None = None
    api_key: str | None = None
    breaker: Breaker = field(default_factory=Breaker, compare=False)  # its health
    tokens_per_char: TokensPerChar = field(default_factory=TokensPerChar, compare=False)
    latency: Latency = field(default_factory=Latency, compare=False)

    @property
    def priced(self) -> bool:
        return self.prompt_price is not None and self.completion_price is not None

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        """USD for a call with these token counts (None when the prices are unknown, or the
        counts are not numbers a price can multiply: a backend's odd ``usage`` is no crash).

        Example:
            >>> b = Backend("big", "http://127.0.0.1:8002", "big", None, 10.0, 30.0)
            >>> b.cost(1000, 100), b.cost(10**400, 1), b.cost("3", 1)
            (0.013, None, None)
        """
        if self.prompt_price is None or self.completion_price is None:
            return None
        if not all(isinstance(n, int | float) for n in (prompt_tokens, completion_tokens)):
            return None
        try:
            usd = prompt_tokens * self.prompt_price + completion_tokens * self.completion_price
        except OverflowError:  # an int beyond any float
            return None
        return usd / 1e6 if math.isfinite(usd) else None

    def url(self, path: str) -> str:
        return f"{self.base_url}/v1{path}"

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def load_backend_file(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """``{name: fields}`` from a TOML/JSON file with a ``backends`` table (see module doc);
    a ValueError names the file and what is wrong in it."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist; pass a TOML or JSON prices file")
    try:
        raw = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{p} is not valid {p.suffix.lstrip('.') or 'TOML'}: {err}") from None
    table = raw.get("backends")
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(
            f"{p} has no [backends.NAME] tables; write e.g. [backends.small] with "
            "prompt_price = 0.2 and completion_price = 0.6 (USD per million tokens)"
        )
    for name, fields in table.items():
        bad = sorted(set(fields) - FIELDS)
        if bad:
            raise ValueError(
                f"{p}: backends.{name} has unknown key(s) {bad}; known: {sorted(FIELDS)}"
            )
        for key in ("prompt_price", "completion_price"):
            value = fields.get(key)
            if value is not None and (
                not isinstance(value, int | float) or not math.isfinite(value) or value < 0
            ):
                raise ValueError(f"{p}: backends.{name}.{key} must be a number >= 0, got {value!r}")
    return table


def parse_backend_args(specs: Sequence[str], config: dict[str, dict[str, Any]]) -> list[Backend]:
    """Backends from ``NAME=URL`` strings, completed by the config file's tables (a backend
    only in the file, with its ``url``, is added too; a ValueError says what is wrong)."""
    urls: dict[str, str] = {}
    for spec in specs:
        name, sep, url = spec.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ValueError(
                f"--backend {spec!r} is not NAME=URL (e.g. small=http://127.0.0.1:8001)"
            )
        if name in urls:
            raise ValueError(f"--backend {name!r} is given twice")
        urls[name] = url
    for name, fields in config.items():
        if name not in urls and fields.get("url"):
            urls[name] = str(fields["url"])
    if not urls:
        raise ValueError("no backends: pass --backend NAME=URL (once per model server)")
    out = []
    for name, url in urls.items():
        fields = config.get(name, {})
        base = url.rstrip("/")
        base = base[: -len("/v1")] if base.endswith("/v1") else base
        key_env = fields.get("api_key_env")
        out.append(
            Backend(
                name=name,
                base_url=base,
                model=str(fields.get("model", name)),
                router_model=fields.get("router_model"),
                prompt_price=fields.get("prompt_price"),
                completion_price=fields.get("completion_price"),
                api_key=os.environ.get(key_env) if key_env else None,
            )
        )
    return out


def map_to_router(backends: list[Backend], router_models: Sequence[str]) -> None:
    """Set each backend's ``router_model`` (its NAME when that is one of the router's);
    a ValueError lists the router's models for a backend matching none."""
    known = list(router_models)
    for b in backends:
        b.router_model = b.router_model or (b.name if b.name in known else None)
        if b.router_model not in known:
            raise ValueError(
                f"backend {b.name!r} is not one of the router's models {known}; name it "
                f"after one (--backend MODEL=URL) or map it in the prices file with "
                f'[backends.{b.name}] router_model = "MODEL"'
            )
