"""`POST /v1/feedback` on a real `dynroute llm serve` (over the real `dynroute serve`
processes of the ``stack`` fixture), and `dynroute llm update` on the log it wrote."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dynroute.cli import app
from dynroute.llm.data import write_wide_jsonl
from dynroute.llm.routers import load_router
from serve_helpers import BIG, SMALL, toy_table
from serving_procs import start_all, stop_all

pytestmark = pytest.mark.slow  # a proxy over the shared serving stack: ~20 s

KEY = "feedback-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
#: questions the toy table never saw; its router sends them to the cheap model
INTEGRALS = [f"what is the integral of x to the power {n}" for n in range(2, 8)]


@pytest.fixture(scope="module")
def proxy(
    stack: dict[str, Any], router_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A keyed proxy over the stack's two model servers that logs the queries' text."""
    root = tmp_path_factory.mktemp("feedback")
    log = root / "decisions.jsonl"
    args = ["llm", "serve", str(router_dir), "--backend", f"{SMALL}={stack['small'].url}"]
    args += ["--backend", f"{BIG}={stack['big'].url}", "--log", str(log), "--log-queries"]
    (proc,) = start_all([[*args, "--api-key", KEY]], root, prefix="feedback")
    try:
        yield {"url": proc.url, "log": log, "root": root}
    finally:
        stop_all([proc])


def ask(proxy: dict[str, Any], text: str, model: str = "auto") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 1}
    r = httpx.post(proxy["url"] + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return r


def give(proxy: dict[str, Any], body: Any, headers: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(proxy["url"] + "/v1/feedback", json=body, headers=headers, timeout=30)


def rows(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_feedback_is_a_row_of_the_log(proxy):
    answer = ask(proxy, "what is 7 plus 2").json()
    r = give(proxy, {"id": answer["id"], "score": 0.25})
    assert r.status_code == 200, r.text
    *_, decision, fed = rows(proxy["log"])
    assert decision["response_id"] == answer["id"] and decision["query"] == "what is 7 plus 2"
    assert fed == {**fed, "kind": "feedback", "response_id": answer["id"], "score": 0.25}
    assert fed["query_sha256"] == decision["query_sha256"] and fed["model"] is None
    assert r.json()["response_id"] == answer["id"]
    # a streamed answer's id (each chunk's) takes feedback too, naming another model
    body = {"model": SMALL, "prompt": "what is 1 plus 1", "max_tokens": 2, "stream": True}
    with httpx.stream(
        "POST", proxy["url"] + "/v1/completions", json=body, headers=AUTH, timeout=60
    ) as s:
        first = next(line for line in s.iter_lines() if line.startswith("data: {"))
    streamed = json.loads(first[6:])["id"]
    assert give(proxy, {"id": streamed, "score": 1, "model": BIG}).status_code == 200
    assert rows(proxy["log"])[-1]["model"] == BIG


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"id": "cmpl-nobody", "score": 0.5}, 404, "no answer with id 'cmpl-nobody'"),
        ({"id": "ID", "score": 1.5}, 422, "score: Value error, must be a number from 0 to 1"),
        ({"id": "ID", "score": "good"}, 422, "score"),
        ({"id": "ID", "score": True}, 422, "score"),
        ({"id": "ID", "score": 0.5, "model": "gpt-9"}, 422, "'gpt-9' is none of"),
        ({"score": 0.5}, 400, "id: Field required"),
    ],
)
def test_bad_feedback_is_refused_and_not_logged(proxy, body, status, needle):
    answered = ask(proxy, "what is 3 plus 3").json()["id"]
    body = {**body, "id": answered} if body.get("id") == "ID" else body
    before = proxy["log"].read_text()
    r = give(proxy, body)
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text
    assert proxy["log"].read_text() == before


def test_feedback_needs_the_key(proxy):
    answered = ask(proxy, "what is 4 plus 4").json()["id"]
    assert give(proxy, {"id": answered, "score": 1.0}, headers={}).status_code == 401


def test_a_feedback_post_changes_the_next_fit(proxy, router_dir):
    """The router sends integrals to the cheap model; strong negative feedback on those
    answers, then `llm update` on the log: the new router sends them to the big one."""
    table = proxy["root"] / "toy.jsonl"
    write_wide_jsonl(toy_table(), table)
    for text in INTEGRALS:
        r = ask(proxy, text)
        assert r.headers["x-dynroute-model"] == SMALL
        assert give(proxy, {"id": r.json()["id"], "score": 0.0}).status_code == 200
    out = proxy["root"] / "updated"
    argv = ["llm", "update", str(router_dir), "--log", str(proxy["log"]), "--table", str(table)]
    result = CliRunner().invoke(app, [*argv, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["used"] >= len(INTEGRALS) and summary["queries"] >= len(INTEGRALS)
    assert load_router(out).route(INTEGRALS) == [BIG] * len(INTEGRALS)
    assert load_router(router_dir).route(INTEGRALS) == [SMALL] * len(INTEGRALS)
