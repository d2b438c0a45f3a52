"""A circuit breaker per proxy backend, and the probes that close it again.

A breaker is *closed* (the backend takes its share of traffic) until ``threshold``
consecutive backend faults (unreachable, timed out, a 5xx, 408 or 429 — never a client's
4xx: :func:`dynroute.serve.proxy_routes.backend_fault`) open it. *Open*, the backend is
tried only after every other one failed (skipped while others can answer). After
``cooldown_s`` it is *half-open*: the background probe
(:func:`dynroute.serve.probes.probe_forever`, started by the proxy's lifespan) asks the
backend's ``GET /health`` (a 404 there: ``GET /v1/models``) and one request may try it
in its usual place; a success closes the breaker, a failure opens it for another ``cooldown_s``.

Example:
    >>> b = Breaker(threshold=2, cooldown_s=5.0)
    >>> b.fault(now=0.0); b.state(now=0.0)
    'closed'
    >>> b.fault(now=1.0); b.state(now=1.0), b.state(now=6.0)
    ('open', 'half_open')
    >>> b.success(); b.state(now=6.0), b.opened
    ('closed', 1)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["DEFAULT_COOLDOWN_S", "DEFAULT_THRESHOLD", "Breaker"]

#: consecutive backend faults that open a breaker: one fault can be a blip (a reset
#: connection), three in a row rarely are; a dead backend costs 3 requests one retry each
DEFAULT_THRESHOLD = 3
#: seconds an open breaker waits before the backend is probed (half-open)
DEFAULT_COOLDOWN_S = 5.0


@dataclass
class Breaker:
    """One backend's breaker (see the module doc); times are ``time.monotonic()``."""

    threshold: int = DEFAULT_THRESHOLD
    cooldown_s: float = DEFAULT_COOLDOWN_S
    faults: int = 0  # consecutive backend faults
    open_until: float | None = None  # None: closed; else half-open from this time on
    trial_until: float = 0.0  # a half-open trial request is out until then
    opened: int = 0  # how many times it opened
    closed_at: list[float] = field(default_factory=list, repr=False)  # when probes closed it

    def state(self, now: float | None = None) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        if self.open_until is None:
            return "closed"
        now = time.monotonic() if now is None else now
        return "open" if now < self.open_until else "half_open"

    def fault(self, now: float | None = None) -> None:
        """A backend fault: opens the breaker at the threshold (reopens a half-open one)."""
        now = time.monotonic() if now is None else now
        self.faults += 1
        if self.open_until is None and self.faults < self.threshold:
            return
        if self.open_until is None:
            self.opened += 1
        self.open_until = now + self.cooldown_s

    def success(self) -> None:
        """The backend answered: the breaker closes."""
        if self.open_until is not None:
            self.closed_at.append(time.monotonic())
        self.faults, self.open_until, self.trial_until = 0, None, 0.0

    def admits(self, now: float | None = None) -> bool:
        """Whether a request may try the backend in its usual place: closed, or half-open
        with no trial out (this call takes the trial; it lapses after ``cooldown_s``)."""
        now = time.monotonic() if now is None else now
        state = self.state(now)
        if state == "closed":
            return True
        if state == "half_open" and now >= self.trial_until:
            self.trial_until = now + self.cooldown_s
            return True
        return False
