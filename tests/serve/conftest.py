"""Shared fixtures: tiny models, a fitted router, and real server processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynroute.llm.routers import make_query_router
from dynroute.serve.tiny import write_tiny_model
from serve_helpers import BIG, SMALL, toy_table
from serving_procs import Proc, start_all, stop_all


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        SMALL: write_tiny_model(root / SMALL, seed=0),
        BIG: write_tiny_model(root / BIG, seed=1),
    }


@pytest.fixture(scope="session")
def router_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    router = make_query_router("knn:k=3").fit(toy_table())
    router.lam = 20.0  # a poem is worth the big model (1 > 20 * 0.009), a sum is not
    return router.save(tmp_path_factory.mktemp("router") / "knn")


@pytest.fixture(scope="session")
def stack(
    tiny_models: dict[str, Path], router_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Two model servers, a proxy over them, and a second proxy over a victim server
    (killed by the fault tests) and the small server; all started at once."""
    logs = tmp_path_factory.mktemp("logs")
    serve = ["serve", "--threads", "1", "--batch-wait-ms", "20"]
    procs = start_all(
        [
            [*serve, str(tiny_models[SMALL]), "--name", SMALL],
            [*serve, str(tiny_models[BIG]), "--name", BIG],
            [*serve, str(tiny_models[BIG]), "--name", BIG],
        ],
        logs,
    )
    small, big, victim = procs
    proxies: list[Proc] = []
    try:
        proxy = ["llm", "serve", str(router_dir), "--backend", f"{SMALL}={small.url}"]
        proxies = start_all(
            [
                [
                    *proxy,
                    "--backend",
                    f"{BIG}={big.url}/v1",
                    "--log",
                    str(logs / "decisions.jsonl"),
                ],
                [*proxy, "--backend", f"{BIG}={victim.url}", "--timeout", "20"],
            ],
            logs,
            prefix="proxy",
        )
        yield {
            "small": small,
            "big": big,
            "victim": victim,
            "proxy": proxies[0],
            "fault_proxy": proxies[1],
            "log": logs / "decisions.jsonl",
        }
    finally:
        stop_all([*proxies, *procs])


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real PostgreSQL server for this session (the ``pgserver`` wheel); the fixture is a
    function ``new_database(name) -> URL`` giving each test an empty database of its own."""
    try:
        import pgserver
        import psycopg
    except ImportError as err:
        pytest.skip(f"no PostgreSQL for the tests: {err} (pip install pgserver psycopg[binary])")
    try:
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    except Exception as err:  # any failure to start: skip, with its reason
        pytest.skip(f"pgserver could not start PostgreSQL here: {err}")
    admin = server.get_uri()

    def new_database(name: str) -> str:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        path, _, query = admin.partition("?")
        return f"{path.rsplit('/', 1)[0]}/{name}?{query}"

    try:
        yield new_database
    finally:
        server.cleanup()
