"""`GET /metrics` on both servers (real processes): Prometheus text with the requests,
latency, and the proxy's routed share, tokens and spend per backend."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(url + "/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def test_the_proxy_counts_requests_and_decisions(stack: dict[str, Any]) -> None:
    proxy, small = stack["proxy"], stack["small"]
    body = {"model": "small", "prompt": "what is 1 plus 2", "max_tokens": 3, "temperature": 0}
    before = _samples(proxy.url)
    for _ in range(3):
        assert httpx.post(proxy.url + "/v1/completions", json=body).status_code == 200
    after = _samples(proxy.url)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("dynroute_requests_total", path="/v1/completions", status="200") == 3
    assert grew("dynroute_request_seconds_count", path="/v1/completions") == 3
    assert grew("dynroute_routed_total", backend="small", status="200") == 3
    assert grew("dynroute_tokens_total", backend="small", kind="completion") >= 3
    assert grew("dynroute_tokens_total", backend="small", kind="prompt") >= 3
    # the backend counts what the proxy sent it
    assert (
        _samples(small.url)[
            ("dynroute_requests_total", (("path", "/v1/completions"), ("status", "200")))
        ]
        >= 3
    )


def test_unknown_paths_share_one_label(stack: dict[str, Any]) -> None:
    small = stack["small"]
    for path in ("/nope/1", "/nope/2"):
        assert httpx.get(small.url + path).status_code == 404
    samples = _samples(small.url)
    assert samples[("dynroute_requests_total", (("path", "other"), ("status", "404")))] >= 2
    assert not any("/nope" in str(labels) for _, labels in samples)
