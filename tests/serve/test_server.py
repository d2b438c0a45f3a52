"""`dynroute serve` over real HTTP: the OpenAI client, streaming, batching, errors, and
bad input that costs its sender a 4xx and no one else anything (issue 25)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from dynroute.serve.app import create_app
from dynroute.serve.errors import INTERNAL_ERROR, install_error_handlers
from dynroute.serve.loading import load_served_model
from dynroute.serve.model_routes import GuardedRoute, ModelLimits
from serve_helpers import SMALL


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=stack["small"].url + "/v1", api_key="none", max_retries=0, timeout=60
    )


def test_health_and_models(stack, client):
    health = httpx.get(stack["small"].url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == SMALL
    assert [m.id for m in client.models.list().data] == [SMALL]


def test_completion_is_greedy_and_counts_tokens(client):
    a = client.completions.create(model=SMALL, prompt="def write_tiny", max_tokens=6)
    b = client.completions.create(model=SMALL, prompt="def write_tiny", max_tokens=6)
    assert a.choices[0].text == b.choices[0].text  # greedy by default: deterministic
    assert a.model == SMALL and a.object == "text_completion"
    assert a.usage.prompt_tokens > 0 and 1 <= a.usage.completion_tokens <= 6
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    assert a.choices[0].finish_reason in ("stop", "length")


def test_streamed_pieces_add_up_to_the_answer(client):
    whole = client.completions.create(model=SMALL, prompt="import torch", max_tokens=8)
    chunks = list(
        client.completions.create(
            model=SMALL,
            prompt="import torch",
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[
        0
    ].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_stream_equals_chat(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    whole = client.chat.completions.create(model=SMALL, messages=messages, max_tokens=6)
    assert whole.choices[0].message.role == "assistant"
    parts = client.chat.completions.create(
        model=SMALL, messages=messages, max_tokens=6, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in parts)
    assert text == whole.choices[0].message.content


def test_stop_string_cuts_the_text(client):
    full = (
        client.completions.create(model=SMALL, prompt="class Tiny", max_tokens=12).choices[0].text
    )
    assert len(full) >= 2, full
    stop = full[len(full) // 2 :][:2]
    cut = client.completions.create(model=SMALL, prompt="class Tiny", max_tokens=12, stop=[stop])
    assert cut.choices[0].text == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_are_batched_and_unchanged(stack, client):
    prompts = ["def f(x):", "def g(y):", "def h(z):", "def k(w):"]
    alone = [
        client.completions.create(model=SMALL, prompt=p, max_tokens=5).choices[0].text
        for p in prompts
    ]
    before = httpx.get(stack["small"].url + "/health", timeout=10).json()["batching"]
    with ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(
                lambda p: (
                    client.completions.create(model=SMALL, prompt=p, max_tokens=5).choices[0].text
                ),
                prompts * 2,
            )
        )
    after = httpx.get(stack["small"].url + "/health", timeout=10).json()["batching"]
    assert together == alone * 2
    assert after["requests"] - before["requests"] == 8
    assert after["generate_calls"] - before["generate_calls"] < 8  # some shared a batch


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"model": "small", "prompt": ', 400, "not valid JSON"),
        (b'{"model": "small"}', 400, "prompt"),
        (b'{"model": "small", "prompt": "x", "max_tokens": "many"}', 400, "max_tokens"),
        (b'{"model": "small", "prompt": "x", "n": 2}', 400, "n"),
        (b'{"model": "small", "prompt": "x", "temperature": -1}', 400, "temperature"),
        (b'{"model": "other", "prompt": "x"}', 404, "serves 'small'"),
        (b'{"model": "small", "prompt": "x", "max_tokens": 100000}', 400, "context length"),
    ],
)
def test_malformed_requests_get_openai_errors(stack, body, status, needle):
    r = httpx.post(
        stack["small"].url + "/v1/completions",
        content=body,
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == status
    error = r.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"


def test_sampling_honours_its_settings(client):
    out = client.completions.create(
        model=SMALL, prompt="def write_tiny", max_tokens=5, temperature=1.5, top_p=0.9
    )
    assert 1 <= out.usage.completion_tokens <= 5
    chat = client.chat.completions.create(
        model=SMALL,
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=3,
        temperature=0.8,
    )
    assert chat.usage.completion_tokens <= 3


def test_prompt_lists_token_ids_and_echo(stack, client):
    one = client.completions.create(model=SMALL, prompt="def f(x):", max_tokens=4)
    both = client.completions.create(model=SMALL, prompt=["def f(x):", "def g(y):"], max_tokens=4)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[0].text == one.choices[0].text
    assert both.usage.prompt_tokens > one.usage.prompt_tokens
    echoed = client.completions.create(model=SMALL, prompt="def f(x):", max_tokens=4, echo=True)
    assert echoed.choices[0].text == "def f(x):" + one.choices[0].text
    ids = httpx.post(
        stack["small"].url + "/v1/completions",
        json={"model": SMALL, "prompt": [5, 6, 7], "max_tokens": 2},
        timeout=30,
    ).json()
    assert ids["usage"]["prompt_tokens"] == 3
    refused = httpx.post(
        stack["small"].url + "/v1/completions",
        json={"model": SMALL, "prompt": ["a", "b"], "stream": True},
        timeout=30,
    )
    assert refused.status_code == 400 and "one prompt" in refused.json()["error"]["message"]


def post(stack, path: str, body: bytes | dict, **kw) -> httpx.Response:
    """POST ``body`` (bytes as they are, else as JSON) to the small model's server."""
    url = stack["small"].url + path
    if isinstance(body, dict):
        return httpx.post(url, json=body, timeout=60, **kw)
    headers = {"content-type": "application/json"}
    return httpx.post(url, content=body, headers=headers, timeout=60, **kw)


def assert_openai_error(r: httpx.Response, status: int, needle: str) -> dict:
    assert r.status_code == status, r.text[:300]
    assert "Traceback" not in r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert needle in error["message"], error
    return error


@pytest.mark.parametrize("echo", [False, True])
@pytest.mark.parametrize("ids", [[5000], [-1], [2**63], [5, 2**64 + 3]])
def test_token_ids_outside_the_vocabulary_are_a_400(stack, ids, echo):
    body = {"model": SMALL, "prompt": ids, "echo": echo, "max_tokens": 2}
    error = assert_openai_error(post(stack, "/v1/completions", body), 400, "vocabulary")
    assert error["param"] == "prompt" and "0 to 299" in error["message"]


def test_a_bad_request_does_not_fail_its_batch(stack, client):
    """Seven greedy requests and one with a token id past the vocabulary, sent together
    (issue 25: all eight used to get a 500): the seven answer as they do alone."""
    prompts = ["def f(x):", "def g(y):", "x = 1", "import torch", "class A:", "return", "y"]
    alone = [
        client.completions.create(model=SMALL, prompt=p, max_tokens=5).choices[0].text
        for p in prompts
    ]
    bodies = [{"model": SMALL, "prompt": p, "max_tokens": 5} for p in prompts]
    bodies.insert(3, {"model": SMALL, "prompt": [5000], "max_tokens": 5, "echo": True})
    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: post(stack, "/v1/completions", b), bodies))
        assert_openai_error(answers.pop(3), 400, "vocabulary")
        assert [r.status_code for r in answers] == [200] * 7
        assert [r.json()["choices"][0]["text"] for r in answers] == alone


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", b'{"model": "small", "prompt": "def \\ud800 f"}'),
        ("/v1/completions", b'{"model": "small", "prompt": ["x", "\\udfff"]}'),
        ("/v1/completions", b'{"model": "small", "prompt": "x", "stop": ["\\ud800"]}'),
        (
            "/v1/chat/completions",
            b'{"model": "small", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
        ),
        (
            "/v1/chat/completions",
            b'{"model": "small", "messages": [{"role": "user", '
            b'"content": [{"type": "text", "text": "\\ud800"}]}]}',
        ),
    ],
)
def test_a_lone_surrogate_is_a_400(stack, path, body):
    assert b"\\ud" in body  # the JSON escape, as a client sends it
    assert_openai_error(post(stack, path, body), 400, "lone surrogate")


def test_a_tiny_temperature_is_greedy_and_odd_numbers_are_refused(stack, client):
    greedy = client.completions.create(model=SMALL, prompt="def f(x):", max_tokens=6)
    tiny = client.completions.create(
        model=SMALL, prompt="def f(x):", max_tokens=6, temperature=1e-40
    )
    assert tiny.choices[0].text == greedy.choices[0].text
    for field in ("temperature", "top_p"):
        for number in ("NaN", "Infinity", "-Infinity"):
            body = f'{{"model": "small", "prompt": "x", "{field}": {number}}}'.encode()
            error = assert_openai_error(post(stack, "/v1/completions", body), 400, field)
            assert error["param"] == field


def test_request_size_limits(stack):
    limit = ModelLimits().max_body_bytes
    huge = {"model": SMALL, "prompt": "x" * (limit + 10)}
    error = assert_openai_error(post(stack, "/v1/completions", huge), 413, f"{limit:,} bytes")
    assert error["type"] == "invalid_request_error"

    def chunks():  # no Content-Length: the server counts what it reads
        yield b'{"model": "small", "prompt": "'
        for _ in range(limit // 50_000 + 1):
            yield b"x" * 50_000
        yield b'"}'

    chunked = post(stack, "/v1/completions", chunks())
    assert_openai_error(chunked, 413, f"{limit:,} bytes")
    many = {"model": SMALL, "prompt": ["x"] * (ModelLimits().max_prompts + 1)}
    error = assert_openai_error(post(stack, "/v1/completions", many), 400, "at most 64")
    assert error["param"] == "prompt"
    # under the body limit but past what 256 tokens can hold: refused untokenized
    long = {"model": SMALL, "prompt": "def f(x): " * 90_000}
    error = assert_openai_error(post(stack, "/v1/completions", long), 400, "900,000 characters")
    assert error["code"] == "context_length_exceeded"
    chat = {"model": SMALL, "messages": [{"role": "user", "content": "y" * 500_000}]}
    error = assert_openai_error(post(stack, "/v1/chat/completions", chat), 400, "characters")
    assert error["param"] == "messages"
    assert httpx.get(stack["small"].url + "/health", timeout=10).status_code == 200


def test_an_unexpected_error_is_a_generic_openai_500():
    """The exception's text (here torch's "index out of range in self") stays in the log."""
    routes = APIRouter(route_class=GuardedRoute)  # as model_routes.router is

    @routes.post("/boom")
    async def boom() -> None:
        raise IndexError("index out of range in self")

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(routes)
    with TestClient(app, raise_server_exceptions=False) as http:
        r = http.post("/boom", json={})
    error = assert_openai_error(r, 500, INTERNAL_ERROR)
    assert error["type"] == "server_error" and "index out of range" not in r.text


def test_a_chat_template_refusal_is_a_400(tiny_models):
    """A template's own check (``raise_exception``) is about the client's messages."""
    served = load_served_model(tiny_models[SMALL], SMALL)
    served.tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('the first message must be a user turn') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    turn = {"model": SMALL, "max_tokens": 2}
    with TestClient(create_app(served), raise_server_exceptions=False) as http:
        refused = http.post(
            "/v1/chat/completions", json={**turn, "messages": [{"role": "assistant"}]}
        )
        answered = http.post(
            "/v1/chat/completions", json={**turn, "messages": [{"role": "user", "content": "x"}]}
        )
    error = assert_openai_error(refused, 400, "the first message must be a user turn")
    assert error["param"] == "messages" and answered.status_code == 200


def test_limits_come_from_the_app_state(tiny_models):
    """``app.state.model_limits`` (what ``create_app`` sets) replaces the defaults."""
    app = create_app(load_served_model(tiny_models[SMALL], SMALL))
    app.state.model_limits = ModelLimits(max_body_bytes=200, max_prompts=2)
    with TestClient(app, raise_server_exceptions=False) as http:
        big = http.post("/v1/completions", json={"model": SMALL, "prompt": "x" * 300})
        many = http.post("/v1/completions", json={"model": SMALL, "prompt": ["a", "b", "c"]})
        fine = http.post("/v1/completions", json={"model": SMALL, "prompt": ["a", "b"]})
    assert_openai_error(big, 413, "200 bytes")
    assert_openai_error(many, 400, "at most 2")
    assert fine.status_code == 200 and len(fine.json()["choices"]) == 2
