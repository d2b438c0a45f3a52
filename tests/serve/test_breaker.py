"""The proxy's circuit breakers with real processes: a killed backend's breaker opens
after 3 faults and traffic goes to the other; restarted, a probe closes it and traffic
returns; ``/health`` and ``/metrics`` show each breaker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from dynroute.common.net import free_port
from serve_helpers import BIG, SMALL, start_fake_backend
from serving_procs import start_all, stop_all

POEM = "write a poem about fire and love"  # the router sends it to BIG
COOLDOWN_S = 1.0
UP = 'dynroute_proxy_backend_up{{backend="big"}} {}.0'


@pytest.fixture
def breaker_proxy(router_dir: Path, tmp_path: Path):
    ports = {SMALL: free_port(), BIG: free_port()}
    fakes = {name: start_fake_backend(port, name) for name, port in ports.items()}
    args = ["llm", "serve", str(router_dir), "--log", str(tmp_path / "log.jsonl"),
            "--breaker-threshold", "3", "--breaker-cooldown", str(COOLDOWN_S)]  # fmt: skip
    for name, port in ports.items():
        args += ["--backend", f"{name}=http://127.0.0.1:{port}"]
    (proxy,) = start_all([args], tmp_path)
    try:
        yield proxy, fakes, ports, tmp_path / "log.jsonl"
    finally:
        stop_all([proxy])
        for fake in fakes.values():
            fake.kill()
            fake.wait()


def ask(url: str) -> str:
    r = httpx.post(url + "/v1/completions", json={"model": "auto", "prompt": POEM}, timeout=10)
    assert r.status_code == 200, r.text
    return r.headers["x-dynroute-model"]


def breaker(url: str) -> dict:
    return httpx.get(url + "/health", timeout=5).json()["breakers"][BIG]


def test_a_killed_backend_is_skipped_then_probed_back_in(breaker_proxy) -> None:
    proxy, fakes, ports, log = breaker_proxy
    assert ask(proxy.url) == BIG and breaker(proxy.url)["state"] == "closed"
    assert UP.format(1) in httpx.get(proxy.url + "/metrics").text
    fakes[BIG].kill()
    fakes[BIG].wait()
    for k in range(3):  # each tries BIG first, fails over to SMALL; the 3rd opens it
        assert ask(proxy.url) == SMALL
        assert breaker(proxy.url)["state"] == ("open" if k == 2 else "closed")
    opened = time.monotonic()
    assert ask(proxy.url) == SMALL  # open: SMALL first, BIG not tried
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [len(r["attempts"]) for r in rows[-4:]] == [1, 1, 1, 0]
    health = httpx.get(proxy.url + "/health").json()
    assert health["backends"][BIG] == "cooling down" and health["breakers"][BIG]["opened"] == 1
    assert UP.format(0) in httpx.get(proxy.url + "/metrics").text
    fakes[BIG] = start_fake_backend(ports[BIG], BIG)  # back on its port
    restarted = time.monotonic()
    deadline = time.monotonic() + 10
    while breaker(proxy.url)["state"] != "closed":
        assert time.monotonic() < deadline, "the probe never closed the breaker"
        time.sleep(0.05)
    closed = time.monotonic()
    assert ask(proxy.url) == BIG
    print(f"opened→closed {closed - opened:.2f} s, answering→closed {closed - restarted:.2f} s")
    # once the backend answers, closed by a probe within the cool-down and a probe round
    assert closed - restarted < COOLDOWN_S + 3, closed - restarted


def test_the_breakers_states_in_order() -> None:
    """Closed until the threshold; open (no request admitted) for the cool-down; then
    half-open: one trial request admitted, a fault reopens, a success closes."""
    from dynroute.serve.breaker import Breaker

    b = Breaker(threshold=3, cooldown_s=5.0)
    b.fault(now=0.0)
    b.success()  # a success in between: the count starts over
    for t in (1.0, 2.0):
        b.fault(now=t)
    assert b.state(now=2.0) == "closed" and b.admits(now=2.0)
    b.fault(now=3.0)
    assert b.state(now=3.0) == "open" and not b.admits(now=7.9) and b.opened == 1
    assert b.admits(now=8.0) and not b.admits(now=8.1)  # one trial at a time
    b.fault(now=8.5)  # the trial failed: open for another cool-down
    assert b.state(now=13.4) == "open" and b.state(now=13.5) == "half_open"
    b.success()
    assert b.state(now=13.5) == "closed" and b.opened == 1 and b.faults == 0
