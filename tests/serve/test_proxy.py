"""`dynroute llm serve` over real HTTP in front of real `dynroute serve` processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest

from dynroute.llm.routers import load_router
from dynroute.serve.backends import map_to_router, parse_backend_args
from dynroute.serve.errors import INTERNAL_ERROR
from dynroute.serve.policy import RoutingPolicy
from dynroute.serve.proxy import create_proxy_app
from serve_helpers import BIG, SMALL, FakeBackend
from serving_procs import start_all, stop_all

POEM = "write a poem about fire and love"
SUM = "what is 7 plus 2"


def proxy_client(proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=proc.url + "/v1", api_key="none", max_retries=0, timeout=60)


def chat(client: openai.OpenAI, model: str, text: str, **kw):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=4, **kw
    )


@pytest.mark.parametrize(
    ("model", "query", "answered_by"),
    [
        ("auto", POEM, BIG),  # saved λ = 20: a poem is worth the big model
        ("auto", SUM, SMALL),  # both are right on sums: the cheaper
        ("router-knn-0", SUM, SMALL),  # λ = 0, a tie in quality: the cheaper
        ("router-knn-1000", POEM, SMALL),  # quality is worth little: the cheapest
        ("router-knn", POEM, BIG),
        (BIG, SUM, BIG),  # a backend's name: no routing
    ],
)
def test_the_model_field_chooses_and_the_answer_says_who(stack, model, query, answered_by):
    raw = chat(proxy_client(stack["proxy"]), model, query)
    assert raw.headers["x-dynroute-model"] == answered_by
    assert raw.parse().model == answered_by


def test_proxied_answer_equals_the_backends(stack):
    direct = proxy_client(stack["big"]).completions.create(model=BIG, prompt=POEM, max_tokens=5)
    via = proxy_client(stack["proxy"]).completions.create(model="auto", prompt=POEM, max_tokens=5)
    assert via.choices[0].text == direct.choices[0].text and via.usage == direct.usage


def test_streaming_through_the_proxy(stack):
    client = proxy_client(stack["proxy"])
    whole = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": POEM}], max_tokens=6
    )
    chunks = list(
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": POEM}], max_tokens=6, stream=True
        )
    )
    assert {c.model for c in chunks} == {BIG}
    assert all(c.usage is None for c in chunks)  # the proxy asked for usage, not the client
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        whole.choices[0].message.content
    )


def test_models_lists_routers_and_backends(stack):
    ids = [m.id for m in proxy_client(stack["proxy"]).models.list().data]
    assert ids == ["auto", "router-knn", SMALL, BIG]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"[1, 2]", 400, "JSON object"),
        (b'{"model": "auto", "messages": ', 400, "not valid JSON"),
        (b'{"model": "auto", "messages": []}', 400, "messages"),
        (b'{"model": "auto", "messages": [{"role": "robot", "content": "x"}]}', 400, "role"),
        (
            b'{"model": "router-mf-0.1", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "router-knn",
        ),
        (
            b'{"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "does not exist",
        ),
    ],
)
def test_malformed_requests_are_refused_before_forwarding(stack, body, status, needle):
    before = stack["log"].read_text().count("\n")
    r = httpx.post(stack["proxy"].url + "/v1/chat/completions", content=body, timeout=30)
    assert r.status_code == status and needle in r.json()["error"]["message"]
    assert stack["log"].read_text().count("\n") == before  # never reached a backend


def test_decisions_are_logged(stack):
    chat(proxy_client(stack["proxy"]), "router-knn-5", POEM)
    row = json.loads(stack["log"].read_text().splitlines()[-1])
    assert row["query_sha256"] == hashlib.sha256(POEM.encode()).hexdigest()
    assert row["requested"] == "router-knn-5" and row["knob"] == 5.0 and row["mode"] == "lambda"
    assert row["chosen"] == BIG and row["router_model"] == BIG and row["status"] == 200
    assert row["predicted_quality"] == pytest.approx(1.0)
    assert row["cost"] > 0 and row["latency_ms"] > 0 and row["completion_tokens"] == 4


def test_killed_backend_requests_go_to_the_other_then_503(stack):
    """The fault proxy's big model is a victim process: once killed, routed requests are
    answered by the small one, direct ones get a clean 503; none hangs."""
    client = proxy_client(stack["fault_proxy"])
    assert chat(client, "auto", POEM).headers["x-dynroute-model"] == BIG
    stack["victim"].kill()
    start = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        raws = list(pool.map(lambda _: chat(client, "auto", POEM), range(6)))
    assert {r.headers["x-dynroute-model"] for r in raws} == {SMALL}
    with pytest.raises(openai.APIStatusError) as refused:
        chat(client, BIG, POEM)
    assert refused.value.status_code == 503
    assert "no backend could answer" in refused.value.message
    assert time.monotonic() - start < 30
    health = httpx.get(stack["fault_proxy"].url + "/health", timeout=10).json()
    assert health["backends"][BIG] == "cooling down"


def test_a_backends_4xx_is_passed_back_and_logged(stack):
    r = httpx.post(
        stack["proxy"].url + "/v1/completions",
        json={"model": SMALL, "prompt": POEM, "max_tokens": 100000},
        timeout=30,
    )
    assert r.status_code == 400 and "context length" in r.json()["error"]["message"]
    assert r.headers["x-dynroute-model"] == SMALL
    row = json.loads(stack["log"].read_text().splitlines()[-1])
    assert row["status"] == 400 and row["chosen"] == SMALL and row["cost"] == 0.0


CHAT = '{"model": "auto", "messages": [{"role": "user", "content": "hi"}]'  # + fields + "}"
DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize(
    ("endpoint", "body", "status", "needle", "param"),
    [
        ("chat/completions", CHAT + ', "x": ' + DEEP + "}", 400, "nests deeper", None),
        ("chat/completions", CHAT + ', "x": ' + "[" * 100 + "]" * 100 + "}", 400, "deeper", None),
        ("chat/completions", CHAT + ', "max_tokens": 1.8e308}', 400, "finite", "max_tokens"),
        ("chat/completions", CHAT + f', "max_tokens": {10**400}}}', 400, "range", "max_tokens"),
        ("chat/completions", CHAT + ', "seed": 9223372036854775808}', 400, "range", "seed"),
        ("chat/completions", CHAT + ', "temperature": NaN}', 400, "temperature", "temperature"),
        ("chat/completions", CHAT + ', "top_k": -Infinity}', 400, "finite", "top_k"),
        ("chat/completions", CHAT + ', "seed": 1' + "0" * 5000 + "}", 400, "4,300 digits", None),
        (
            "chat/completions",
            '{"model": "auto", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
            400,
            "surrogate",
            "messages.0.content",
        ),
        ("completions", '{"model": "auto", "prompt": "\\udfff"}', 400, "U+DFFF", "prompt"),
        (
            "completions",
            '{"model": "auto", "prompt": "x", "logit_bias": {"5": -1e999}}',
            400,
            "finite",
            "logit_bias.5",
        ),
        ("completions", '{"model": "small", "prompt": [18446744073709551616]}', 400, "range", None),
        ("completions", '{"model": "router-knn-1e999", "prompt": "x"}', 400, "-inf", "model"),
        ("completions", '{"model": "auto", "prompt": "x", "\\ud800": 1}', 400, "string", None),
    ],
)
def test_bad_values_are_400s_naming_the_field_and_reach_no_backend(
    stack, endpoint, body, status, needle, param
):
    """Issue 25, items 3, 5 and 8: each was a plain-text 500 (or an ``Infinity`` in the
    decision log); now a 400 in OpenAI's shape before any decision, the proxy unhurt."""
    before = stack["log"].read_text().count("\n")
    r = httpx.post(
        f"{stack['proxy'].url}/v1/{endpoint}",
        content=body.encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    error = r.json()["error"]
    assert r.status_code == status and needle in error["message"], error
    assert error["type"] == "invalid_request_error" and "Traceback" not in r.text
    if param is not None:
        # the schema (a message) or the value walk (its content) names the field first
        assert error["param"] and param.startswith(error["param"]), error
    assert stack["log"].read_text().count("\n") == before  # never reached a backend
    assert chat(proxy_client(stack["proxy"]), "auto", SUM).status_code == 200


def test_only_json_bodies_are_read(stack):
    url = stack["proxy"].url + "/v1/completions"
    body = json.dumps({"model": SMALL, "prompt": SUM, "max_tokens": 2})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = httpx.post(url, content=body, headers={"content-type": kind}, timeout=30)
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "unsupported_media_type"
    r = httpx.post(
        url, content=body, headers={"content-type": "application/json; charset=utf-8"}, timeout=30
    )
    assert r.status_code == 200 and r.json()["model"] == SMALL


def test_a_requests_own_fault_is_not_retried_and_cools_no_backend(stack):
    """Issue 25, item 6: a routed request every backend would refuse (it asks for more
    tokens than the context holds) gets the first backend's 400, tried once; both
    backends stay in rotation for everyone else."""
    url = stack["proxy"].url
    for _ in range(3):
        r = httpx.post(
            url + "/v1/completions",
            json={"model": "auto", "prompt": SUM, "max_tokens": 100000},
            timeout=30,
        )
        assert r.status_code == 400 and "context length" in r.json()["error"]["message"]
        row = json.loads(stack["log"].read_text().splitlines()[-1])
        assert row["attempts"] == [] and row["chosen"] == r.headers["x-dynroute-model"]
    health = httpx.get(url + "/health", timeout=10).json()
    assert health["backends"] == {SMALL: "ok", BIG: "ok"}
    assert chat(proxy_client(stack["proxy"]), "auto", POEM).headers["x-dynroute-model"] == BIG


def test_the_decision_log_is_strict_json(stack):
    """``router-knn-inf`` (λ = ∞, the cheapest) is logged with ``knob: null``: every line
    parses with a parser that refuses NaN and Infinity."""
    assert chat(proxy_client(stack["proxy"]), "router-knn-inf", POEM).status_code == 200

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    rows = [
        json.loads(line, parse_constant=refuse) for line in stack["log"].read_text().splitlines()
    ]
    assert rows[-1]["requested"] == "router-knn-inf" and rows[-1]["knob"] is None
    assert rows[-1]["chosen"] == SMALL


def test_an_unexpected_error_is_a_generic_500(router_dir):
    """In process, as no route of a real proxy fails on purpose: an exception no handler
    expected is a 500 in OpenAI's shape; its text (internals) never reaches the client."""
    router = load_router(str(router_dir))
    backends = parse_backend_args([f"{SMALL}=http://127.0.0.1:9"], {})
    map_to_router(backends, router.models)
    app = create_proxy_app(RoutingPolicy(router, backends))

    @app.post("/boom")
    async def boom() -> None:
        raise RuntimeError("index out of range in self")

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            return await client.post("/boom")

    r = asyncio.run(post())
    assert r.status_code == 500 and r.json()["error"]["message"] == INTERNAL_ERROR
    assert r.json()["error"]["type"] == "server_error" and "index out of" not in r.text


#: what the odd backend answers, by prompt
ODD_ANSWERS = {
    "list": b"[1, 2]",
    "html": b"<html>busy</html>",
    "nan": b'{"choices": [{"text": "ok", "index": 0}], "usage": [1], "score": NaN}',
}


class OddBackend(FakeBackend):
    """A backend answering 200 with bodies no OpenAI server sends."""

    def answer(self, request: dict[str, Any]) -> bytes:
        return ODD_ANSWERS[request["prompt"]]


def test_a_backends_odd_answer_is_a_502_or_cleaned(router_dir, tmp_path):
    """A body that is not a JSON object is a 502 in OpenAI's shape; a NaN is sent on as
    ``null`` (strict JSON) and a ``usage`` that is no object counts as none."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), OddBackend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    log = tmp_path / "decisions.jsonl"
    args = ["llm", "serve", str(router_dir), "--backend", f"{SMALL}={url}", "--log", str(log)]
    (proxy,) = start_all([args], tmp_path)
    try:
        for prompt in ("list", "html"):
            r = httpx.post(
                proxy.url + "/v1/completions", json={"model": SMALL, "prompt": prompt}, timeout=30
            )
            assert r.status_code == 502 and "no JSON object" in r.json()["error"]["message"]
        r = httpx.post(
            proxy.url + "/v1/completions", json={"model": SMALL, "prompt": "nan"}, timeout=30
        )
        assert r.status_code == 200 and r.json()["score"] is None and r.json()["model"] == SMALL
        assert [json.loads(line)["status"] for line in log.read_text().splitlines()] == [
            502,
            502,
            200,
        ]
    finally:
        stop_all([proxy])
        server.shutdown()


def test_the_cost_estimate_learns_each_backends_tokens_per_character(stack, router_dir, tmp_path):
    """Priced before it is sent, a request's prompt tokens are characters/4 until the
    backend's answers have shown its own rate (the tiny models count one token a byte):
    then the estimate is the prompt's real cost (what budgets reserve)."""
    prices = tmp_path / "prices.toml"
    prices.write_text(
        f"[backends.{BIG}]\nprompt_price = 10.0\ncompletion_price = 0.0\n"
        f"[backends.{SMALL}]\nprompt_price = 1.0\ncompletion_price = 0.0\n"
    )
    args = ["llm", "serve", str(router_dir), "--prices", str(prices), "--log"]
    args += [str(tmp_path / "log.jsonl"), "--backend", f"{BIG}={stack['big'].url}"]
    (proxy,) = start_all([[*args, "--backend", f"{SMALL}={stack['small'].url}"]], tmp_path)
    try:
        client = proxy_client(proxy)
        prompt = "how many legs do three spiders have? " * 5  # 185 characters
        for _ in range(7):  # 1,295 characters: past TokensPerChar.MIN_CHARS
            client.completions.create(model=BIG, prompt=prompt, max_tokens=1)
    finally:
        stop_all([proxy])
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    real, first, last = rows[-1]["cost"], rows[0]["estimated_cost"], rows[-1]["estimated_cost"]
    assert rows[-1]["prompt_tokens"] > len(prompt) / 2  # characters/4 undercounts here
    assert first < 0.5 * real  # characters/4: far short
    assert last == pytest.approx(real, rel=1e-6)  # learnt: the prompt's tokens exactly


def test_body_size_and_max_tokens_caps(stack, router_dir, tmp_path):
    """--max-body-bytes: a larger body is a 413 before it is read; --max-tokens-cap: more
    is a 400 naming the flag, and a chat that names no max_tokens is sent with the cap."""
    args = ["llm", "serve", str(router_dir), "--backend", f"{SMALL}={stack['small'].url}"]
    args += ["--backend", f"{BIG}={stack['big'].url}", "--max-body-bytes", "2000"]
    (proxy,) = start_all([[*args, "--max-tokens-cap", "3"]], tmp_path)
    try:
        url = proxy.url + "/v1/chat/completions"
        big = {"model": SMALL, "messages": [{"role": "user", "content": "x" * 3000}]}
        r = httpx.post(url, json=big, timeout=30)
        assert r.status_code == 413 and "2,000 bytes" in r.json()["error"]["message"]
        ask = {"model": SMALL, "messages": [{"role": "user", "content": SUM}], "max_tokens": 4}
        r = httpx.post(url, json=ask, timeout=30)
        assert r.status_code == 400 and "--max-tokens-cap" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "max_tokens"
        del ask["max_tokens"]  # the model server would answer up to 256 tokens
        r = httpx.post(url, json=ask, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    finally:
        stop_all([proxy])
