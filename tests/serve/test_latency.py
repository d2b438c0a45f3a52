"""Latency- and load-aware routing: the proxy learns each backend's answer time and calls
in flight (``Latency``) and, with ``--latency-penalty``, routes around a slow backend."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynroute.common.net import free_port
from dynroute.llm.routers import make_query_router
from dynroute.serve.backends import Latency, map_to_router, parse_backend_args
from dynroute.serve.policy import RoutingPolicy
from serve_helpers import BIG, SMALL, start_fake_backend, toy_table
from serving_procs import start_all, stop_all

POEM = "write a poem about fire and love"  # the router prefers BIG for it


@given(st.lists(st.one_of(st.none(), st.floats(0, 100)), max_size=40))
def test_latency_is_a_moving_average_and_load_never_goes_negative(times):
    lat, ref = Latency(), None
    for t in times:
        lat.started()
        lat.done(t)
        if t is not None:
            ref = t if ref is None else ref + lat.alpha * (t - ref)
    assert lat.in_flight == 0
    assert lat.seconds == (None if ref is None else pytest.approx(ref))
    lat.done(None)  # more ends than starts (a late stream): still no negative load
    assert lat.in_flight == 0


def test_the_expected_wait_counts_the_calls_in_flight():
    lat = Latency(seconds=0.5)
    assert lat.expected() == 0.5
    lat.started(), lat.started()
    assert lat.expected() == pytest.approx(1.5)


def policy(penalty: float) -> RoutingPolicy:
    r = make_query_router("knn:k=3").fit(toy_table())
    r.lam = 20.0
    found = parse_backend_args([f"{SMALL}=http://127.0.0.1:1", f"{BIG}=http://127.0.0.1:2"], {})
    map_to_router(found, [SMALL, BIG])
    return RoutingPolicy(r, found, latency_penalty=penalty)


def test_a_slow_backend_is_routed_around_only_with_a_penalty():
    for penalty, first in ((0.0, BIG), (2.0, SMALL)):
        p = policy(penalty)
        assert p.decide("auto", POEM, None).order[0].name == BIG  # no answer time known yet
        p.by_name[BIG].latency.done(1.0)  # BIG took a second
        d = p.decide("auto", POEM, None)
        assert d.order[0].name == first and d.waits[BIG] == 1.0
        assert d.predicted[BIG] > d.predicted[SMALL]  # the prediction itself is untouched


def test_a_cascade_escalates_past_a_slow_cheap_backend():
    for penalty, first in ((0.0, SMALL), (2.0, BIG)):
        p = policy(penalty)
        p.cascade, p.threshold = True, 0.5
        p.by_name[SMALL].latency.done(1.0)  # good enough for sums, but slow
        assert p.decide("auto", "what is 7 plus 2", None).order[0].name == first


def test_a_negative_penalty_is_refused():
    with pytest.raises(ValueError, match="--latency-penalty"):
        policy(-1.0)


def test_the_proxy_routes_around_a_slowed_backend(router_dir: Path, tmp_path: Path):
    ports = {SMALL: free_port(), BIG: free_port()}
    # BIG streams 10 pieces 0.05 s apart: half a second a call; SMALL answers at once.
    fakes = {
        SMALL: start_fake_backend(ports[SMALL], SMALL),
        BIG: start_fake_backend(ports[BIG], BIG, delay=0.05),
    }
    log = tmp_path / "log.jsonl"
    args = ["llm", "serve", str(router_dir), "--log", str(log), "--latency-penalty", "2"]
    for name, port in ports.items():
        args += ["--backend", f"{name}=http://127.0.0.1:{port}"]
    (proxy,) = start_all([args], tmp_path)
    try:
        chosen = []
        for _ in range(2):
            body = {"model": "auto", "prompt": POEM, "stream": True}
            with httpx.stream("POST", proxy.url + "/v1/completions", json=body, timeout=20) as r:
                assert r.status_code == 200
                r.read()
                chosen.append(r.headers["x-dynroute-model"])
        assert chosen == [BIG, SMALL]  # BIG first, then avoided: ≥ 0.5 s × 2 > its edge
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        assert rows[0]["expected_wait_s"] == 0.0 and rows[1]["expected_wait_s"] == 0.0
        assert rows[0]["upstream_ms"] >= 500
    finally:
        stop_all([proxy])
        for fake in fakes.values():
            fake.kill()
            fake.wait()
