"""The proxy's database (serve/store.py) on a real SQLite file and a real PostgreSQL server:
keys stored hashed, reservations that never overspend from two stores racing on one
database, decision rows kept in order, one-line errors naming the URL and the remedy."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dynroute.serve.budgets import check_limits, key_rows, key_sha256
from dynroute.serve.decisions import DecisionLog
from dynroute.serve.store import Charge, KeyRow, Refusal, Reservation, Store, open_store

PLAIN, NAMED = "sk-plain-secret-1", "sk-team-a-secret-2"


def _keys_file(root: Path, usd_per_day: float) -> Path:
    path = root / "keys.toml"
    path.write_text(f'[keys.team-a]\nkey = "{NAMED}"\nusd_per_day = {usd_per_day}\n')
    return path


def _sqlite(root: Path) -> str:
    return f"sqlite:///{root / 'proxy.db'}"


def test_keys_are_stored_as_sha256_only(tmp_path: Path) -> None:
    rows, limited = key_rows([PLAIN, NAMED], _keys_file(tmp_path, 1.0))
    store = open_store(_sqlite(tmp_path))
    store.sync_keys(rows)
    store.sync_keys(rows)  # idempotent: a restart finds them there
    store.close()
    assert limited
    db = sqlite3.connect(tmp_path / "proxy.db")
    stored = dict(db.execute("SELECT name, key_sha256 FROM dynroute_keys").fetchall())
    limits = db.execute("SELECT usd_per_day FROM dynroute_keys WHERE name='team-a'").fetchone()
    db.close()
    plain_name = f"key-{key_sha256(PLAIN)[:8]}"
    assert stored == {"team-a": key_sha256(NAMED), plain_name: key_sha256(PLAIN)}
    assert limits == (1.0,)
    for file in tmp_path.glob("proxy.db*"):  # the database and its WAL: no plain key anywhere
        data = file.read_bytes()
        assert PLAIN.encode() not in data and NAMED.encode() not in data


def test_a_renamed_or_rotated_key_keeps_its_spend(tmp_path: Path) -> None:
    store = open_store(_sqlite(tmp_path))
    store.sync_keys([KeyRow("team-a", key_sha256(NAMED), usd_per_day=1.0)])
    held = store.reserve(key_sha256(NAMED), Charge(0.5, 1, "big", 3e6), check_limits)
    assert isinstance(held, Reservation)
    store.sync_keys([KeyRow("team-x", key_sha256(NAMED), usd_per_day=2.0)])  # renamed
    assert store.usage("team-x", 3e6).usd_day == 0.5
    store.sync_keys([KeyRow("team-x", key_sha256("sk-new"), usd_per_day=2.0)])  # rotated
    refused = store.reserve(key_sha256("sk-new"), Charge(1.6, 1, "big", 3e6), check_limits)
    assert isinstance(refused, Refusal) and "team-x" in refused.message  # 0.5 + 1.6 > 2
    assert store.reserve(key_sha256(NAMED), Charge(0.1, 1, "big", 3e6), check_limits) is None
    store.sync_keys([KeyRow("team-z", "ff" * 32)])
    with pytest.raises(ValueError, match="each key one name"):  # team-z's name, another key
        store.sync_keys([KeyRow("team-z", key_sha256("sk-new"))])  # ... and team-x's key
    store.close()


def _race(urls: list[str], limit: float, cost: float, attempts: int) -> tuple[int, float]:
    """``attempts`` reservations of ``cost`` from 16 threads over one store per URL (the
    same database); ``(how many were granted, the key's day spend)``."""
    stores = [open_store(u) for u in urls]
    try:
        stores[0].sync_keys([KeyRow("team-a", key_sha256(NAMED), usd_per_day=limit)])

        def one(i: int) -> Reservation | Refusal | None:
            charge = Charge(cost, 3, "small", 1_000_000.0 + i * 1e-3)
            return stores[i % len(stores)].reserve(key_sha256(NAMED), charge, check_limits)

        with ThreadPoolExecutor(16) as pool:
            done = list(pool.map(one, range(attempts)))
        granted = sum(isinstance(d, Reservation) for d in done)
        assert all(d.code == "insufficient_quota" for d in done if isinstance(d, Refusal))
        return granted, stores[0].usage("team-a", 1_000_000.0 + attempts).usd_day
    finally:
        for s in stores:
            s.close()


def test_two_stores_on_one_sqlite_file_never_overspend(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    granted, spent = _race([url, url], limit=0.1, cost=0.011, attempts=40)
    assert granted == 9 and spent == pytest.approx(0.099)  # 10 would pass the limit


@pytest.mark.slow
def test_two_stores_on_one_postgresql_never_overspend(postgres: Callable[[str], str]) -> None:
    url = postgres("race")
    granted, spent = _race([url, url], limit=0.1, cost=0.011, attempts=40)
    assert granted == 9 and spent == pytest.approx(0.099)


def test_settle_replaces_the_estimate_and_decisions_keep_their_order(tmp_path: Path) -> None:
    store = open_store(_sqlite(tmp_path))
    rows, _ = key_rows([], _keys_file(tmp_path, 1.0))
    store.sync_keys(rows)
    now = 2_000_000.0
    held = store.reserve(key_sha256(NAMED), Charge(0.5, 10, "big", now), check_limits)
    assert isinstance(held, Reservation)
    again = store.reserve(key_sha256(NAMED), Charge(0.6, 10, "big", now), check_limits)
    assert isinstance(again, Refusal) and "team-a" in again.message  # 0.5 + 0.6 > 1
    assert store.reserve(key_sha256("unknown"), Charge(9, 1, "big", now), check_limits) is None
    store.settle(held, 0.125, 7, 20, "small")
    with DecisionLog(None, store) as log:
        for i in range(3):
            log.write({"chosen": "small", "i": i, "key": "team-a", "knob": float("inf")})
    tomorrow = now + 86400  # same UTC month, the next day
    late = store.reserve(key_sha256(NAMED), Charge(0.75, 10, "big", tomorrow), check_limits)
    assert isinstance(late, Reservation)  # a new day: 0.75 fits in 1
    store.flush()
    assert store.usage("team-a", now).usd_day == 0.125
    next_day = store.usage("team-a", tomorrow)
    assert (next_day.usd_day, next_day.usd_month) == (0.75, 0.875)
    lines = list(store.decision_lines())
    store.close()
    rows_back = [json.loads(line) for line in lines]
    assert [r["i"] for r in rows_back] == [0, 1, 2] and rows_back[0]["knob"] is None
    assert all("time" in r for r in rows_back)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u:secret@h/db", "not a SQLite or PostgreSQL URL"),
        ("sqlite:////proc/no/such/proxy.db", "cannot create its folder"),
        ("postgresql://u:secret@127.0.0.1:1/db", "check that the server runs"),
    ],
    ids=["bad-url", "unwritable-file", "unreachable-server"],
)
def test_a_database_that_cannot_be_opened_is_one_line_naming_the_url(url: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        open_store(url)
    message = str(info.value)
    assert says in message and len(message.splitlines()) == 1, message
    assert message.startswith("--db ") and "secret" not in message, message


def test_a_store_closes_after_writing_what_was_queued(tmp_path: Path) -> None:
    store: Store = open_store(_sqlite(tmp_path))
    for i in range(200):
        store.add_decision({"time": "t", "key": None}, json.dumps({"i": i}))
    store.close()
    reopened = open_store(_sqlite(tmp_path))
    assert len(list(reopened.decision_lines())) == 200
    reopened.close()
