"""Run an ASGI app with uvicorn; a port that cannot be bound fails at once, in one line.

Example:
    >>> from dynroute.common.net import free_port
    >>> port = free_port()
    >>> check_port("127.0.0.1", port)   # free: no error
"""

from __future__ import annotations

import errno
import socket
from typing import Any

__all__ = ["check_port", "run_app"]


def check_port(host: str, port: int) -> None:
    """Raise ``OSError`` with a one-line message if ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            why = (
                "is in use"
                if err.errno == errno.EADDRINUSE
                else f"cannot be bound ({err.strerror})"
            )
            raise OSError(f"port {port} on {host} {why}; pass another --port") from None


def run_app(app: Any, host: str, port: int, banner: str, access_log: bool = False) -> None:
    """Serve ``app`` until interrupted; print ``banner`` once the socket listens."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(banner, flush=True)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=access_log,
        timeout_graceful_shutdown=5,
    )
    _Server(config).run()
