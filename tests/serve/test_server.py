"""`dynroute serve` over real HTTP: the OpenAI client, streaming, batching, errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

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
