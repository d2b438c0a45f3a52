"""What the proxy's handlers read from ``request.app.state``.

:func:`dynroute.serve.proxy.create_proxy_app` sets ``policy`` (the
:class:`~dynroute.serve.policy.RoutingPolicy`, with the backends), ``decision_log`` (the
:class:`~dynroute.serve.decisions.DecisionLog`) and ``created`` (Unix seconds); its
lifespan sets ``client`` (the ``httpx.AsyncClient`` every backend call goes through).
"""

from __future__ import annotations

import httpx
from fastapi import Request

from dynroute.serve.decisions import DecisionLog
from dynroute.serve.policy import RoutingPolicy

__all__ = ["client_of", "created_at", "decision_log", "policy_of"]


def policy_of(request: Request) -> RoutingPolicy:
    policy: RoutingPolicy = request.app.state.policy
    return policy


def decision_log(request: Request) -> DecisionLog:
    log: DecisionLog = request.app.state.decision_log
    return log


def client_of(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.client
    return client


def created_at(request: Request) -> int:
    return int(request.app.state.created)
