"""SIGTERM drains both servers (real processes): the streams in flight all finish with
their ``[DONE]``, a new request during the drain gets a 503 in OpenAI's shape, ``/health``
answers 503 "draining", and the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dynroute.common.net import free_port
from dynroute.serve.tiny import write_tiny_model
from serve_helpers import SMALL, start_fake_backend
from serving_procs import Proc, start_all, stop_all

STREAMS = 20


def stream(url: str, body: dict, started: threading.Barrier) -> list[str]:
    """The ``data:`` lines of one streamed completion (the barrier: all have begun)."""
    lines = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                if not lines:
                    started.wait(timeout=30)
                lines.append(line[6:])
    return lines


def wait_until_draining(url: str, timeout_s: float = 10.0) -> None:
    """Poll ``/health`` until the server says it is draining (the signal was handled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(url + "/health", timeout=10).status_code == 503:
            return
        time.sleep(0.01)
    raise AssertionError(f"{url} did not start draining within {timeout_s} s of SIGTERM")


def drain_while_streaming(proc: Proc, body: dict) -> tuple[list[list[str]], float]:
    """Start STREAMS streams, SIGTERM once each has sent its first event, check the drain
    from outside; the streams' lines and how long the process took to exit."""
    started = threading.Barrier(STREAMS + 1)
    with ThreadPoolExecutor(STREAMS) as pool:
        futures = [pool.submit(stream, proc.url, body, started) for _ in range(STREAMS)]
        started.wait(timeout=60)
        proc.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_until_draining(proc.url)
        refused = httpx.post(proc.url + "/v1/completions", json=body, timeout=10)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "server_draining" and error["type"] == "service_unavailable"
        health = httpx.get(proc.url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "draining"
        results = [f.result(timeout=180) for f in futures]  # within the server's 120 s drain
    assert proc.popen.wait(timeout=30) == 0
    took = time.monotonic() - signalled
    done = sum(r[-1] == "[DONE]" for r in results)
    print(f"SIGTERM during {STREAMS} streams: {done} ended with [DONE]; exit 0 after {took:.2f} s")
    return results, took


def test_the_proxy_drains_its_streams_on_sigterm(router_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    # 6 s a stream: longer than uvicorn's own graceful shutdown (5 s), which would cut it
    fake = start_fake_backend(port, SMALL, pieces=20, delay=0.3)
    args = ["llm", "serve", str(router_dir), "--backend", f"{SMALL}=http://127.0.0.1:{port}"]
    (proxy,) = start_all([args], tmp_path)
    try:
        body = {"model": SMALL, "prompt": "hi", "stream": True}
        results, took = drain_while_streaming(proxy, body)
        assert all(r[-1] == "[DONE]" and len(r) == 21 for r in results), results
        assert 5 < took < 15  # the streams' 6 s, not uvicorn's 5 s cut-off
    finally:
        stop_all([proxy])
        fake.kill()
        fake.wait()


@pytest.mark.slow
def test_the_model_server_drains_its_streams_on_sigterm(tmp_path: Path) -> None:
    # Wider and longer than the shared tiny models: their 200 tokens can all be generated
    # before the probe below reaches an idle machine's server, which then has exited
    # (600 tokens still did once in CI: 2,500 leave seconds, not a race).
    model = write_tiny_model(tmp_path / "slow", d_model=128, max_seq_len=4096)
    args = ["serve", str(model), "--name", SMALL, "--threads", "1",
            "--max-batch", str(STREAMS), "--drain-timeout", "120"]  # fmt: skip
    (server,) = start_all([args], tmp_path)
    try:
        body = {"model": SMALL, "prompt": "a", "stream": True, "max_tokens": 2500,
                "temperature": 1.0, "stop": []}  # fmt: skip
        results, _ = drain_while_streaming(server, body)
        assert all(r[-1] == "[DONE]" for r in results)
    finally:
        stop_all([server])
