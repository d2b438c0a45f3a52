"""Property-based fuzzing of the routing proxy's request bodies (issue 25): one real
`dynroute llm serve` over one real tiny `dynroute serve`, started once for the module.

Whatever the body (malformed JSON, wrong types, huge or non-finite numbers, lone
surrogates, empty messages, absurd ``n`` / ``max_tokens`` / ``stop``, odd model names,
a Content-Type that is not JSON), the answer is a 200 or a 4xx in OpenAI's error shape,
never a traceback, and the proxy still answers a valid request afterwards. The fast suite
sends a few dozen bodies per endpoint; the slow one 500.

The values that today's model server still answers with a 500 (token ids outside its
vocabulary, a temperature of 1e-40: issue 25, items 1 and 4, fixed in the model server)
are left out of the strategies: the proxy passes a backend's 5xx on as a 503.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_helpers import SMALL
from serving_procs import Proc, start_all, stop_all

ODD_TEXT = ["", "\ud800", "a\udfffb", "\ud83d", "\x00", "\u202e", "😀", "\ufeff", "\n" * 50]
text = st.one_of(st.text(max_size=40), st.sampled_from(ODD_TEXT))
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2, 5, 300, 10**6, 2**63 - 1, 2**63, 10**400, 1e-40, 1e308]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
models = st.one_of(
    st.sampled_from(["auto", SMALL, "router-knn", "router-knn-0", "router-knn-inf", "gpt-4o"]),
    st.sampled_from(["router-knn-1e999", "router-knn--1", "router-mf", "", "AUTO"]),
    text,
    json_values,
)
#: fields both endpoints read; each is left out, sane, or absurd
SHARED: dict[str, Any] = {
    "max_tokens": st.one_of(st.integers(1, 4), numbers, scalars),
    "temperature": st.one_of(st.sampled_from([0, 0.5, 1.0, 2.0, -1, 3]), scalars),
    "top_p": st.one_of(st.sampled_from([0.1, 1.0, 0, 2]), scalars),
    "n": st.one_of(st.integers(-3, 3), numbers, scalars),
    "stream": st.one_of(st.booleans(), scalars),
    "stop": st.one_of(text, st.lists(text, max_size=6), json_values),
    "stream_options": st.one_of(st.just({"include_usage": True}), json_values),
    "seed": numbers,
    "logit_bias": json_values,
}
prompts = st.one_of(
    text,
    st.lists(text, max_size=3),
    st.lists(st.integers(0, 255), max_size=8),  # token ids the tiny model knows
    st.lists(st.sampled_from([2**63, 2**64, -(2**63) - 1]), min_size=1, max_size=2),
    json_values,
)
messages = st.one_of(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "role": st.one_of(st.sampled_from(["user", "system", "assistant", "robot"]), text),
                "content": st.one_of(
                    text,
                    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text})),
                    json_values,
                ),
            },
        ),
        max_size=3,
    ),
    json_values,
)


def bodies(main_field: str, main: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with ``model``, ``main_field`` and any of :data:`SHARED`, each field
    sometimes missing."""
    return st.fixed_dictionaries({}, optional={"model": models, main_field: main, **SHARED})


def nested(depth: int) -> bytes:
    return b'{"model": "auto", "prompt": "x", "x": ' + b"[" * depth + b"]" * depth + b"}"


def requests(main_field: str, main: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``(body bytes, content type)``: mostly JSON objects (NaN and Infinity written as
    Python does, which the proxy's parser reads), sometimes raw bytes or deep nesting."""
    as_json = bodies(main_field, main).map(lambda b: json.dumps(b).encode())
    raw = st.one_of(
        st.binary(max_size=64),
        as_json.map(lambda b: b[: len(b) // 2]),  # cut short
        st.sampled_from([b"", b"null", b"[]", b'"x"', b"1e999", nested(2000), nested(500)]),
    )
    kinds = st.sampled_from(["application/json", None, "text/plain", "application/x+json"])
    return st.tuples(st.one_of(as_json, as_json, as_json, raw), kinds)


@pytest.fixture(scope="module")
def proxy(
    tiny_models: dict[str, Path], router_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    logs = tmp_path_factory.mktemp("fuzz-logs")
    (backend,) = start_all([["serve", str(tiny_models[SMALL]), "--name", SMALL]], logs)
    procs = [backend]
    try:
        args = ["llm", "serve", str(router_dir), "--backend", f"{SMALL}={backend.url}"]
        procs += start_all([[*args, "--log", str(logs / "d.jsonl")]], logs, prefix="proxy")
        yield procs[1]
    finally:
        stop_all(procs[::-1])


def check_answer(r: httpx.Response) -> None:
    """A 200, or a 4xx with OpenAI's error JSON; never a traceback."""
    assert "Traceback" not in r.text
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code == 200:
        return
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def fuzz(proxy: Proc, endpoint: str, strategy: st.SearchStrategy[Any], examples: int) -> None:
    url = f"{proxy.url}/v1/{endpoint}"
    with httpx.Client(timeout=60) as client:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(strategy)
        def one(request: tuple[bytes, str | None]) -> None:
            content, kind = request
            headers = {"content-type": kind} if kind else {}
            check_answer(client.post(url, content=content, headers=headers))

        one()
        # still answering: a valid request, and its health
        valid = {"model": "auto", "max_tokens": 2}
        valid |= {"prompt": "hi"} if endpoint == "completions" else {}
        valid |= (
            {"messages": [{"role": "user", "content": "hi"}]} if endpoint != "completions" else {}
        )
        r = client.post(url, json=valid)
        assert r.status_code == 200 and r.headers["x-dynroute-model"] == SMALL
        health = client.get(proxy.url + "/health").json()
        assert health["backends"] == {SMALL: "ok"}  # no bad body cooled the backend down


ENDPOINTS = [("completions", "prompt", prompts), ("chat/completions", "messages", messages)]


@pytest.mark.parametrize(("endpoint", "field", "main"), ENDPOINTS)
def test_fuzzed_bodies_get_a_200_or_a_4xx(proxy, endpoint, field, main):
    fuzz(proxy, endpoint, requests(field, main), examples=40)


@pytest.mark.slow
@pytest.mark.parametrize(("endpoint", "field", "main"), ENDPOINTS)
def test_fuzzed_bodies_get_a_200_or_a_4xx_at_length(proxy, endpoint, field, main):
    fuzz(proxy, endpoint, requests(field, main), examples=500)
