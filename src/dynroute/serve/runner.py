"""Run an ASGI app with uvicorn; a port that cannot be bound fails at once, in one line.

SIGTERM drains the app (its ``app.state.drain``, :mod:`~dynroute.serve.drain`): new
requests get a 503, those in flight (streams too) finish, then the server exits 0; after
``drain_timeout_s`` it stops anyway. SIGHUP calls ``app.state.reload`` where the app has
one (the proxy: :mod:`~dynroute.serve.reload`).

Example:
    >>> from dynroute.common.net import free_port
    >>> port = free_port()
    >>> check_port("127.0.0.1", port)   # free: no error
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
from typing import Any

from dynroute.serve.drain import DEFAULT_DRAIN_TIMEOUT_S

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


def run_app(
    app: Any,
    host: str,
    port: int,
    banner: str,
    access_log: bool = False,
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
) -> None:
    """Serve ``app`` until interrupted or drained (module doc); print ``banner`` once the
    socket listens."""
    import uvicorn

    drain = getattr(app.state, "drain", None)
    reload = getattr(app.state, "reload", None)
    reloads: set[asyncio.Task[Any]] = set()  # held: the loop keeps only weak references

    def on_sighup() -> None:
        task = asyncio.ensure_future(reload("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                if reload is not None:
                    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)
                print(banner, flush=True)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig == signal.SIGTERM and drain is not None and not drain.draining:
                drain.start(drain_timeout_s)  # not uvicorn's exit: the listener stays open
                print(f"SIGTERM: draining ({drain.in_flight} in flight)", flush=True)
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if drain is not None and drain.done():
                self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=access_log,
        timeout_graceful_shutdown=5,
    )
    _Server(config).run()
