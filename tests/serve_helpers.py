"""Shared by tests/serve: the two model names, a toy outcome table to fit a router on, and
a fake backend to serve odd or slow answers."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from dynroute.llm.data import OutcomeTable

SMALL, BIG = "small", "big"


def toy_table() -> OutcomeTable:
    """Sums: both models are right; poems: only the big one. Big costs 10x."""
    sums = [f"what is {a} plus {b}" for a in range(6) for b in range(4)]
    poems = [
        f"write a poem about {w} and {v}"
        for w in ("sea", "sky", "tree", "rock", "wind", "snow")
        for v in ("love", "time", "war", "home")
    ]
    quality = [[1.0, 1.0]] * len(sums) + [[0.0, 1.0]] * len(poems)
    return OutcomeTable.from_rows(
        sums + poems, [SMALL, BIG], quality, [[0.001, 0.01]] * len(quality)
    )


class FakeBackend(BaseHTTPRequestHandler):
    """A backend for a ``ThreadingHTTPServer``: every POST gets 200 and the JSON bytes
    :meth:`answer` gives for the request's JSON body (a subclass decides them)."""

    def answer(self, request: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def do_POST(self) -> None:
        reply = self.answer(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass
