"""Shared by tests/serve: the two model names, a toy outcome table to fit a router on, and
a fake backend to serve odd or slow answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx

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
        self.reply(
            200, self.answer(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        )

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class FakeOpenAI(FakeBackend):
    """A fake OpenAI backend: ``GET /health`` and ``/v1/models`` answer 200; a POST is a
    completion (``{"choices": [{"text": NAME}]}``) or, with ``"stream": true``, ``PIECES``
    chunks ``DELAY`` seconds apart, a usage chunk and ``[DONE]``."""

    NAME, PIECES, DELAY = "fake", 10, 0.0

    def do_GET(self) -> None:
        self.reply(200, json.dumps({"status": "ok", "data": []}).encode())

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        usage = {"prompt_tokens": 1, "completion_tokens": self.PIECES, "total_tokens": 11}
        if not request.get("stream"):
            choice = {"index": 0, "text": self.NAME, "finish_reason": "stop"}
            body = {"id": "x", "model": self.NAME, "usage": usage, "choices": [choice]}
            self.reply(200, json.dumps(body).encode())
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for i in range(self.PIECES):
            time.sleep(self.DELAY)
            chunk = {"id": "x", "model": self.NAME, "choices": [{"index": 0, "text": str(i)}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        tail = {"id": "x", "model": self.NAME, "choices": [], "usage": usage}
        self.wfile.write(f"data: {json.dumps(tail)}\n\ndata: [DONE]\n\n".encode())
        self.close_connection = True


def start_fake_backend(port: int, name: str, pieces: int = 10, delay: float = 0.0) -> Any:
    """A :class:`FakeOpenAI` in its own process on ``port`` (a ``subprocess.Popen``: kill it
    to take the backend down); returns once it answers."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import serve_helpers as h; "
        "h.serve_fake(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))"
    )
    here = str(Path(__file__).parent)
    args = [sys.executable, "-c", code, here, str(port), name, str(pieces), str(delay)]
    proc = subprocess.Popen(args)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the fake backend on port {port} did not start")


def serve_fake(port: int, name: str, pieces: int, delay: float) -> None:
    """Run :class:`FakeOpenAI` on ``port`` until killed (what :func:`start_fake_backend`
    starts)."""
    from http.server import ThreadingHTTPServer

    handler = type("Fake", (FakeOpenAI,), {"NAME": name, "PIECES": pieces, "DELAY": delay})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.serve_forever()
