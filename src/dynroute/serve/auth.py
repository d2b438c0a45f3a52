"""Inbound API keys for both servers: ``Authorization: Bearer KEY`` or a 401.

Keys come from ``--api-key KEY`` (repeatable), ``--api-key-file FILE`` (one key a line,
``#`` comments; a ``.toml`` file names keys and their limits: :mod:`~dynroute.serve.keyfile`)
and the ``DYNROUTE_API_KEY`` environment variable (comma-separated), as
vLLM's ``--api-key`` and LiteLLM's master key work. With no key the server is open, which
:func:`check_exposure` allows on a loopback address only, unless the user says they mean
it (``--allow-no-key``): the routing proxy spends *its* backends' keys for whoever can
reach it.

``/health`` stays open (load balancers and the readiness probes of tests call it); every
other path needs a key, but for ``/admin/...``, which checks the admin key itself
(``--admin-key`` or ``DYNROUTE_ADMIN_KEY``: :mod:`~dynroute.serve.reload`). Keys are
compared in constant time.

Example:
    >>> sorted(load_keys(["k1"], None, {"DYNROUTE_API_KEY": "k2, k3"}))
    ['k1', 'k2', 'k3']
    >>> check_exposure("127.0.0.1", frozenset(), allow_no_key=False)  # loopback: fine
    >>> check_exposure("0.0.0.0", frozenset(), allow_no_key=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: --host 0.0.0.0 opens the server beyond this machine with no API key; ...
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dynroute.serve.keyfile import is_toml_key_file, read_key_file
from dynroute.serve.schemas import error_body

__all__ = [
    "ADMIN_KEY_ENV_VAR",
    "ADMIN_PREFIX",
    "KEY_ENV_VAR",
    "OPEN_PATHS",
    "RequireKey",
    "bearer_token",
    "check_exposure",
    "load_admin_key",
    "load_keys",
]

#: Comma-separated API keys, read when no ``--api-key`` flag gives them.
KEY_ENV_VAR = "DYNROUTE_API_KEY"
#: Paths answered without a key.
OPEN_PATHS = frozenset({"/health"})
#: The admin key, read when no ``--admin-key`` flag gives it.
ADMIN_KEY_ENV_VAR = "DYNROUTE_ADMIN_KEY"
#: Paths that check the admin key instead of a client key.
ADMIN_PREFIX = "/admin/"


def load_admin_key(key: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The admin key: the flag's, else ``DYNROUTE_ADMIN_KEY``; None: no admin endpoints.

    Example:
        >>> load_admin_key(None, {"DYNROUTE_ADMIN_KEY": " root "}), load_admin_key(None, {})
        ('root', None)
    """
    env = os.environ if environ is None else environ
    found = (key or env.get(ADMIN_KEY_ENV_VAR) or "").strip()
    return found or None


def bearer_token(headers: Mapping[str, str]) -> bytes:
    """The bearer token of a request's headers (``b""`` when there is none).

    Example:
        >>> bearer_token({"authorization": "Bearer k1 "}), bearer_token({})
        (b'k1', b'')
    """
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""


def load_keys(
    keys: Iterable[str] | None,
    key_file: Path | None,
    environ: Mapping[str, str] | None = None,
) -> frozenset[str]:
    """The accepted keys: flags, then the file, then ``DYNROUTE_API_KEY``; empty: no auth.

    Raises:
        FileNotFoundError / ValueError: a key file that is missing or holds no key.
    """
    found = [k.strip() for k in keys or () if k.strip()]
    if key_file is not None:
        if not key_file.is_file():
            raise FileNotFoundError(f"--api-key-file {key_file}: no such file")
        if is_toml_key_file(key_file):  # named keys with limits (serve/keyfile.py)
            from_file = [spec.key for spec in read_key_file(key_file)]
        else:
            lines = [ln.strip() for ln in key_file.read_text(encoding="utf-8").splitlines()]
            from_file = [ln for ln in lines if ln and not ln.startswith("#")]
        if not from_file:
            raise ValueError(f"--api-key-file {key_file} holds no key (one key a line)")
        found += from_file
    env = os.environ if environ is None else environ
    found += [k.strip() for k in env.get(KEY_ENV_VAR, "").split(",") if k.strip()]
    return frozenset(found)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine.

    Example:
        >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "10.0.0.5")]
        [True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, keys: frozenset[str], allow_no_key: bool) -> None:
    """Refuse, in one line, to open a server beyond loopback without a key (unless told)."""
    if keys or allow_no_key or is_loopback(host):
        return
    raise ValueError(
        f"--host {host} opens the server beyond this machine with no API key; pass "
        f"--api-key KEY (or --api-key-file FILE, or set {KEY_ENV_VAR}), or --allow-no-key "
        "if anyone who can reach it may use it"
    )


class RequireKey:
    """ASGI middleware: a request outside :data:`OPEN_PATHS` needs one of ``keys`` as its
    bearer token, else 401 in OpenAI's error shape (streams pass through untouched)."""

    def __init__(self, app: ASGIApp, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    def _authorized(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers") or ())
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        # every key compared, in constant time: no early exit tells a prefix apart
        return any([hmac.compare_digest(token, key) for key in self.keys])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        if self._authorized(scope):
            await self.app(scope, receive, send)
            return
        body: dict[str, Any] = error_body(
            "missing or incorrect API key: send the header 'Authorization: Bearer KEY'",
            "invalid_request_error",
            code="invalid_api_key",
        )
        response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
