"""The model server's generation limits with a real process: a non-streaming client that
leaves cancels its generation (the next request is served at once; ``/health`` and
``/metrics`` count it), ``--request-timeout`` is a 504, ``--max-prompt-tokens`` and
``--max-tokens-cap`` are 400s naming the flag."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from serve_helpers import SMALL
from serving_procs import start_all, stop_all

TIMEOUT_S = 3.0
#: one request of 16 prompts, each 250 tokens (greedy: the tiny model never stops early),
#: one at a time (--max-batch 1): over a minute of generation
LONG = {"model": SMALL, "prompt": ["a"] * 16, "max_tokens": 250}


@pytest.fixture(scope="module")
def capped(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    args = ["serve", str(tiny_models[SMALL]), "--name", SMALL, "--threads", "1",
            "--max-batch", "1", "--batch-wait-ms", "0", "--request-timeout", str(TIMEOUT_S),
            "--max-prompt-tokens", "50", "--max-tokens-cap", "250"]  # fmt: skip
    (server,) = start_all([args], tmp_path_factory.mktemp("capped"))
    try:
        yield server
    finally:
        stop_all([server])


def post(url: str, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json=body, timeout=timeout)


def cancelled(url: str) -> int:
    return httpx.get(url + "/health", timeout=10).json()["batching"]["cancelled"]


def test_a_client_that_leaves_frees_its_slots(capped) -> None:
    before = cancelled(capped.url)
    with pytest.raises(httpx.ReadTimeout):
        post(capped.url, LONG, timeout=0.5)  # gives up, closes the connection
    start = time.monotonic()
    r = post(capped.url, {"model": SMALL, "prompt": "a", "max_tokens": 1})
    served_in = time.monotonic() - start
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    while cancelled(capped.url) < before + 16:  # the running one and the 15 queued
        assert time.monotonic() < deadline, cancelled(capped.url)
        time.sleep(0.05)
    print(f"client left: 16 generations cancelled; the next request served in {served_in:.2f} s")
    assert served_in < 2.0, served_in
    metrics = httpx.get(capped.url + "/metrics", timeout=10).text
    assert f"dynroute_cancelled_total {float(before + 16)}" in metrics


def test_a_generation_over_the_timeout_is_a_504(capped) -> None:
    start = time.monotonic()
    r = post(capped.url, LONG)
    assert r.status_code == 504, r.text
    assert time.monotonic() - start < TIMEOUT_S + 2
    error = r.json()["error"]
    assert error["code"] == "request_timeout" and "--request-timeout" in error["message"]


@pytest.mark.parametrize(
    ("body", "flag", "code"),
    [
        ({"prompt": "ab " * 200, "max_tokens": 1}, "--max-prompt-tokens", "prompt_too_long"),
        ({"prompt": "ab " * 5000, "max_tokens": 1}, "--max-prompt-tokens", "prompt_too_long"),
        ({"prompt": list(range(60)), "max_tokens": 1}, "--max-prompt-tokens", "prompt_too_long"),
        ({"prompt": "a", "max_tokens": 251}, "--max-tokens-cap", "max_tokens_too_large"),
    ],
)
def test_caps_are_400s_naming_the_flag(capped, body, flag, code) -> None:
    r = post(capped.url, {"model": SMALL, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code and flag in r.json()["error"]["message"]


def test_chat_caps(capped) -> None:
    chat = {"model": SMALL, "messages": [{"role": "user", "content": "ab " * 200}]}
    r = httpx.post(capped.url + "/v1/chat/completions", json=chat, timeout=30)
    assert r.status_code == 400 and "--max-prompt-tokens" in r.json()["error"]["message"]
