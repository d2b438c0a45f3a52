"""--max-concurrent with a real proxy in front of a slow backend: a client's request over
the limit is a 429 with Retry-After in OpenAI's shape; another client, /health and the
same client once its request finished are answered."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_helpers import SMALL, FakeBackend
from serving_procs import start_all, stop_all

HOLD_S = 2.0  # how long the slow backend takes to answer
KEYS = ("key-a", "key-b")


class SlowBackend(FakeBackend):
    """Answers every completion after HOLD_S seconds."""

    def answer(self, request: dict[str, Any]) -> bytes:
        time.sleep(HOLD_S)
        return json.dumps({"choices": [{"text": "ok", "index": 0}], "usage": {}}).encode()


@pytest.fixture(scope="module")
def limited(router_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowBackend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = tmp_path_factory.mktemp("limits")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    args = ["llm", "serve", str(router_dir), "--backend", f"{SMALL}={url}",
            "--api-key", KEYS[0], "--api-key", KEYS[1], "--max-concurrent", "1"]  # fmt: skip
    (proxy,) = start_all([args], root)
    try:
        yield proxy
    finally:
        stop_all([proxy])
        server.shutdown()


def _post(url: str, key: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/completions",
        json={"model": SMALL, "prompt": "hi", "max_tokens": 2},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_over_the_limit_is_a_429_for_that_client_only(limited) -> None:
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(_post, limited.url, KEYS[0])
        time.sleep(HOLD_S / 4)  # the first request now holds key-a's one slot
        second = _post(limited.url, KEYS[0])
        other = pool.submit(_post, limited.url, KEYS[1])  # another client: its own slot
        assert httpx.get(limited.url + "/health").status_code == 200  # never limited
        assert first.result().status_code == 200 and other.result().status_code == 200
    assert second.status_code == 429, second.text
    assert second.headers["retry-after"] == "1"
    error = second.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "at most 1" in error["message"]
    assert _post(limited.url, KEYS[0]).status_code == 200  # its slot is free again
