"""Fuzzing `dynroute serve` over real HTTP: any body gets a 200 or a 4xx in OpenAI's error
format, never a 500 or a traceback, and the server keeps answering (issue 25).

One server process serves the whole module; the slow variants send >= 500 bodies per
endpoint, the fast ones a few dozen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_helpers import SMALL
from serving_procs import Proc, start_all, stop_all

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory) -> Iterator[Proc]:
    serve = ["serve", str(tiny_models[SMALL]), "--name", SMALL, "--threads", "1"]
    (proc,) = start_all([serve], tmp_path_factory.mktemp("fuzz-logs"), prefix="fuzz")
    try:
        yield proc
    finally:
        stop_all([proc])


@pytest.fixture(scope="module")
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


# Strings a tokenizer or a JSON encoder may choke on: lone surrogates, NUL, RTL marks,
# combining marks, emoji with joiners, the replacement character, long runs.
ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", "\ud800", "a\udfffb", "\x00", "\u202e", "e\u0301", "👩‍💻", "\ufffd", "\n" * 50]
    ),
    st.text(alphabet="ab \n", min_size=1000, max_size=5000),
)
HUGE = st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64 + 1, -(2**63) - 1, 10**400])
NUMBERS = st.one_of(
    st.integers(-10, 300),
    HUGE,
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-40, 1e308, -0.0, 5e-324]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, ODD_TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=4),
    max_leaves=8,
)
TOKEN_IDS = st.lists(st.one_of(st.integers(-5, 320), HUGE), max_size=8)
#: each field's value: mostly plausible (so bodies reach the model), sometimes anything
SETTINGS = {
    "max_tokens": st.one_of(st.integers(-2, 40), HUGE, JSON),
    "temperature": st.one_of(st.sampled_from([0, 1e-40, 1e-6, 0.7, 2, 2.5, -1]), JSON),
    "top_p": st.one_of(st.sampled_from([1e-300, 0.5, 1, 0, 1.5]), JSON),
    "n": st.one_of(st.integers(-1, 3), HUGE, JSON),
    "stream": st.one_of(st.booleans(), JSON),
    "stop": st.one_of(st.lists(ODD_TEXT, max_size=6), ODD_TEXT, JSON),
    "stream_options": st.one_of(st.just({"include_usage": True}), JSON),
}
PROMPT = st.one_of(ODD_TEXT, st.lists(ODD_TEXT, max_size=70), TOKEN_IDS, JSON)
TEXT_PARTS = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": ODD_TEXT}))
ROLES = st.sampled_from(["system", "user", "assistant", "robot"])
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.one_of(ROLES, JSON), "content": st.one_of(ODD_TEXT, TEXT_PARTS, JSON)}
    ),
    JSON,
)


def body(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A request body: mostly a JSON object with ``model`` and the ``required`` fields and
    some ``optional`` ones (each a plausible value or anything), else a mangled one (any
    fields, cut short, not an object, not JSON, non-standard numbers, nested deep)."""
    optional = {**SETTINGS, **optional}
    plausible = st.fixed_dictionaries({"model": st.just(SMALL), **required}, optional=optional)
    anything = st.fixed_dictionaries({}, optional={"model": ODD_TEXT, **required, **optional})
    encoded = st.one_of(plausible, plausible, plausible, anything).map(
        lambda d: json.dumps(d).encode()  # lone surrogates are written \ud800
    )
    mangled = st.one_of(
        encoded.flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i])),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
        encoded.map(lambda b: b.replace(b"0", b"NaN", 1).replace(b"1", b"Infinity", 1)),
        st.integers(1, 3000).map(lambda d: b'{"model": "small", "prompt": ' + b"[" * d),
    )
    return st.one_of(encoded, encoded, encoded, mangled)


COMPLETION_BODIES = body({"prompt": PROMPT}, {"echo": st.one_of(st.booleans(), JSON)})
CHAT_BODIES = body(
    {"messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON)},
    {"max_completion_tokens": st.one_of(st.integers(-1, 40), HUGE, JSON)},
)


def check_answer(http: httpx.Client, path: str, data: bytes) -> None:
    """POST ``data``: a 200 with choices (or a stream) or a 4xx in OpenAI's error format;
    never a 5xx, never a traceback."""
    r = http.post(path, content=data, headers={"content-type": "application/json"})
    text = r.text
    assert "Traceback" not in text and r.status_code < 500, (r.status_code, text[:500], data[:300])
    if r.status_code == 200:
        if r.headers["content-type"].startswith("text/event-stream"):
            assert text.endswith("data: [DONE]\n\n") and "server_error" not in text, text[-500:]
        else:
            assert r.json()["choices"], text[:500]
        return
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error" and error["message"], error


def still_healthy(http: httpx.Client) -> None:
    assert http.get("/health", timeout=10).json()["status"] == "ok"


@given(data=COMPLETION_BODIES)
def test_completion_bodies_get_200_or_openai_4xx(http, data):
    check_answer(http, COMPLETIONS, data)


@given(data=CHAT_BODIES)
def test_chat_bodies_get_200_or_openai_4xx(http, data):
    check_answer(http, CHAT, data)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=COMPLETION_BODIES)
def test_many_completion_bodies(http, data):
    check_answer(http, COMPLETIONS, data)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=CHAT_BODIES)
def test_many_chat_bodies(http, data):
    check_answer(http, CHAT, data)


def test_the_server_still_answers_after_fuzzing(http):
    """Runs last in this module: the fuzzed server still answers, and the same way."""
    still_healthy(http)
    a = http.post(COMPLETIONS, json={"model": SMALL, "prompt": "def f", "max_tokens": 4})
    b = http.post(COMPLETIONS, json={"model": SMALL, "prompt": "def f", "max_tokens": 4})
    assert a.status_code == 200 and a.json()["choices"][0]["text"] == b.json()["choices"][0]["text"]
