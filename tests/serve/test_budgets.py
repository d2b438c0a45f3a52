"""Per-key budgets and rate limits with real `dynroute llm serve` processes on 127.0.0.1
over a fake priced backend: a key over its USD budget gets 429 ``insufficient_quota``, and
still does after a SIGKILL and a restart on the same database (SQLite; PostgreSQL in the
slow suite); a key over its requests or prompt tokens per minute gets 429
``rate_limit_exceeded`` with Retry-After; two proxies on one database, hit concurrently,
spend at most the budget; the decision log comes back out of the database as JSONL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_helpers import SMALL, FakeBackend
from serving_procs import Proc, cli_env, start_all, stop_all

KEYS = {"team-a": "sk-team-a-1", "team-b": "sk-team-b-2", "team-c": "sk-team-c-3"}
PRICE = 1000.0  # USD per million tokens, prompt and completion alike
PROMPT = "hello world!"  # 12 characters: 3 prompt tokens, as the proxy estimates them
MAX_TOKENS = 8
COST = (3 + MAX_TOKENS) * PRICE / 1e6  # what one request costs: 0.011 USD
# What the proxy reserves before the backend's tokens per character are learnt: one token
# a character (12 + 8 tokens), the most a request can cost.
RESERVED = (len(PROMPT) + MAX_TOKENS) * PRICE / 1e6  # 0.020 USD
DAY_BUDGET = 0.06  # four requests fit (3 spent + 1 reserved: 0.053), a fifth would pass it


class PricedBackend(FakeBackend):
    """Answers a completion with ``max_tokens`` tokens and the prompt's characters / 4 as
    usage (so the proxy's estimate is exact), after a short wait (requests overlap)."""

    def answer(self, request: dict[str, Any]) -> bytes:
        time.sleep(0.05)
        usage = {"prompt_tokens": len(request["prompt"]) // 4, "completion_tokens": MAX_TOKENS}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choice = {"text": "ok", "index": 0, "finish_reason": "length"}
        body = {"object": "text_completion", "choices": [choice], "usage": usage}
        return json.dumps(body).encode()


class UnderestimatedBackend(PricedBackend):
    """Counts 11 more prompt tokens than the proxy estimates (a chat template, say): each
    request costs twice its estimate."""

    def answer(self, request: dict[str, Any]) -> bytes:
        body = json.loads(super().answer(request))
        body["usage"]["prompt_tokens"] += 11
        return json.dumps(body).encode()


def _serve(handler: type[FakeBackend]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def backend_url() -> Iterator[str]:
    yield from _serve(PricedBackend)


def _files(root: Path, usd_per_day: float = DAY_BUDGET) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    keys = root / "keys.toml"
    keys.write_text(
        f'[keys.team-a]\nkey = "{KEYS["team-a"]}"\nusd_per_day = {usd_per_day}\n'
        f'[keys.team-b]\nkey = "{KEYS["team-b"]}"\nrequests_per_minute = 2\n'
        f'[keys.team-c]\nkey = "{KEYS["team-c"]}"\nprompt_tokens_per_minute = 5\n'
    )
    prices = root / "prices.toml"
    prices.write_text(f"[backends.{SMALL}]\nprompt_price = {PRICE}\ncompletion_price = {PRICE}\n")
    return keys, prices


def _proxy_args(
    router_dir: Path, backend_url: str, root: Path, db: str | None, budget: float = DAY_BUDGET
) -> list[str]:
    keys, prices = _files(root, budget)
    args = ["llm", "serve", str(router_dir), "--backend", f"{SMALL}={backend_url}",
            "--prices", str(prices), "--api-key-file", str(keys)]  # fmt: skip
    return args + (["--db", db] if db else [])


def _post(proxy: Proc, team: str) -> httpx.Response:
    return httpx.post(
        proxy.url + "/v1/completions",
        json={"model": SMALL, "prompt": PROMPT, "max_tokens": MAX_TOKENS},
        headers={"Authorization": f"Bearer {KEYS[team]}"},
        timeout=30,
    )


def _spend_until_refused(proxy: Proc) -> list[int]:
    return [_post(proxy, "team-a").status_code for _ in range(6)]


def _assert_over_budget(answer: httpx.Response) -> None:
    assert answer.status_code == 429, answer.text
    error = answer.json()["error"]
    assert error["code"] == "insufficient_quota" and "team-a" in error["message"], error
    assert "per UTC day" in error["message"]


def _metric(text: str, name: str) -> float:
    """The value of ``dynroute_proxy_<name>`` in a Prometheus exposition."""
    line = next(ln for ln in text.splitlines() if ln.startswith("dynroute_proxy_" + name))
    return float(line.rsplit(" ", 1)[1])


def _budget_survives_a_crash(
    args: list[str], logs: Path, then: Callable[[Proc], None] | None = None
) -> None:
    """Spend team-a's budget, SIGKILL the proxy, start it again: still over; the other
    keys' per-minute limits hold; then ``then(the restarted proxy)``."""
    (proxy,) = start_all([args], logs, prefix="budget")
    try:
        assert _spend_until_refused(proxy) == [200] * 4 + [429] * 2  # 4 × 0.011 fit in 0.06
        _assert_over_budget(_post(proxy, "team-a"))
        metrics = httpx.get(proxy.url + "/metrics", headers={"Authorization": "Bearer sk-team-b-2"})
        assert _metric(metrics.text, 'key_spend_usd_total{key_name="team-a"}') == pytest.approx(
            4 * COST
        )
        refused = 'budget_refusals_total{code="insufficient_quota",key_name="team-a"}'
        assert _metric(metrics.text, refused) == 3
        proxy.kill()  # SIGKILL: no shutdown, no flush
    finally:
        stop_all([proxy])
    (again,) = start_all([args], logs, prefix="budget_again")
    try:
        _assert_over_budget(_post(again, "team-a"))  # the spend outlived the process
        _assert_per_minute_limits(again)  # other keys: their own limits
        if then is not None:
            then(again)
    finally:
        stop_all([again])


def _assert_per_minute_limits(proxy: Proc) -> None:
    """team-b: 2 requests a minute; team-c: 5 prompt tokens a minute (a request is 3)."""
    assert [_post(proxy, "team-b").status_code for _ in range(2)] == [200, 200]
    over = _post(proxy, "team-b")
    assert _post(proxy, "team-c").status_code == 200
    tokens_over = _post(proxy, "team-c")  # 3 + 3 > 5
    for answer, what in ((over, "2 requests per minute"), (tokens_over, "5 prompt tokens")):
        assert answer.status_code == 429, answer.text
        error = answer.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and what in error["message"], error
        assert 1 <= int(answer.headers["retry-after"]) <= 60


def test_over_budget_is_a_429_that_survives_a_sigkill(
    router_dir: Path, backend_url: str, tmp_path: Path
) -> None:
    """No --db: a keys file with a budget keeps it in SQLite next to it (keys.db). The
    restarted proxy also enforces the per-minute limits (429 with Retry-After), and answers
    503 while its database is unusable."""

    def database_lost(proxy: Proc) -> None:  # fail closed: no ledger, no backend call
        with sqlite3.connect(tmp_path / "keys.db") as db:
            db.execute("ALTER TABLE dynroute_spend RENAME TO elsewhere")
        answer = _post(proxy, "team-b")
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "budget_store_unavailable"
        with sqlite3.connect(tmp_path / "keys.db") as db:
            db.execute("ALTER TABLE elsewhere RENAME TO dynroute_spend")

    args = _proxy_args(router_dir, backend_url, tmp_path, None)
    _budget_survives_a_crash(args, tmp_path, then=database_lost)
    assert (tmp_path / "keys.db").is_file()
    export = tmp_path / "export.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "dynroute.cli", "llm", "export-log",
         "--db", f"sqlite:///{tmp_path / 'keys.db'}", "--out", str(export)],
        capture_output=True, text=True, timeout=120, env=cli_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    # the answered requests, in order (a refused request is no decision)
    assert [r["key"] for r in rows] == ["team-a"] * 4 + ["team-b"] * 2 + ["team-c"], rows
    assert all(r["status"] == 200 and r["cost"] == pytest.approx(COST) for r in rows)
    assert "wrote 7 decisions" in done.stdout


@pytest.mark.parametrize(
    ("db", "says"),
    [("mysql://u:pw@h/db", "not a SQLite or PostgreSQL URL"), ("sqlite:////proc/x/p.db", "folder")],
    ids=["bad-url", "unwritable"],
)
def test_a_bad_db_is_refused_in_one_line(router_dir: Path, db: str, says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dynroute.cli", "llm", "serve", str(router_dir),
         "--backend", f"{SMALL}=http://127.0.0.1:1", "--db", db, "--port", "1"],
        capture_output=True, text=True, timeout=120, env=cli_env(),
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and says in line and "--db" in line, line


@pytest.mark.slow
def test_over_budget_survives_a_sigkill_on_postgresql(
    router_dir: Path, backend_url: str, tmp_path: Path, postgres: Callable[[str], str]
) -> None:
    args = _proxy_args(router_dir, backend_url, tmp_path, postgres("budget_kill"))
    _budget_survives_a_crash(args, tmp_path)


def _two_proxies_race(
    router_dir: Path, backend_url: str, root: Path, db: str, budget: float
) -> tuple[int, float]:
    """Two proxies on ``db``, 64 requests from 16 threads spread over both: ``(how many
    were answered, what they cost)``."""
    args = _proxy_args(router_dir, backend_url, root, db, budget)
    proxies = start_all([args, args], root, prefix="replica")
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: _post(proxies[i % 2], "team-a"), range(64)))
    finally:
        stop_all(proxies)
    ok = [a for a in answers if a.status_code == 200]
    assert all(a.json()["error"]["code"] == "insufficient_quota" for a in answers if a not in ok)
    spent = sum(
        (a.json()["usage"]["prompt_tokens"] + a.json()["usage"]["completion_tokens"]) * PRICE / 1e6
        for a in ok
    )
    return len(ok), spent


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_two_proxies_on_one_database_never_overspend(
    router_dir: Path, backend_url: str, tmp_path: Path, engine: str, request: Any
) -> None:
    db = (
        f"sqlite:///{tmp_path / 'shared.db'}"
        if engine == "sqlite"
        else request.getfixturevalue("postgres")("replicas")
    )
    budget = 0.2  # 17 requests of 0.011 fit while each reserves 0.020 (0.176 + 0.020)
    answered, spent = _two_proxies_race(router_dir, backend_url, tmp_path, db, budget)
    print(f"two proxies on {engine}: {answered} answered, ${spent:.4f} of ${budget}")
    assert spent <= budget  # each reservation is the most its request can cost: never over
    assert 10 <= answered <= 17  # at least the budget's worth of reservations


@pytest.mark.slow
def test_an_estimate_that_misses_is_over_by_at_most_what_the_requests_in_flight_missed(
    router_dir: Path, tmp_path: Path
) -> None:
    """Each request costs twice its estimate: the key can pass its budget by the misses of
    the requests in flight when it was reached (16 clients: at most 16 × $0.011)."""
    url_iter = _serve(UnderestimatedBackend)
    url = next(url_iter)
    try:
        answered, spent = _two_proxies_race(
            router_dir, url, tmp_path, f"sqlite:///{tmp_path / 'shared.db'}", 0.2
        )
    finally:
        next(url_iter, None)
    print(f"estimate half the cost: {answered} answered, ${spent:.4f} of $0.2")
    assert 0.2 - 2 * COST < spent <= 0.2 + 16 * COST
