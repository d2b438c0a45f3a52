"""Reloading the proxy's router without a restart (real process): replace the router
folder, ``POST /admin/reload`` (admin key only) or SIGHUP, and the decisions change; a
folder that fails to load leaves the old router serving and says why."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from dynroute.common.net import free_port
from dynroute.llm.routers import make_query_router
from serve_helpers import BIG, SMALL, start_fake_backend, toy_table
from serving_procs import start_all, stop_all

POEM = "write a poem about fire and love"
CLIENT, ADMIN = "client-key", "admin-key"


def routed(url: str) -> str:
    r = httpx.post(
        url + "/v1/completions",
        json={"model": "auto", "prompt": POEM},
        headers={"Authorization": f"Bearer {CLIENT}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-dynroute-model"]


def reload(url: str, key: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(url + "/admin/reload", headers=headers, timeout=60)


def put_router(folder: Path, lam: float) -> None:
    """Replace ``folder`` by a knn router with λ = ``lam`` (20: poems go to BIG; 1000:
    everything to the cheap SMALL)."""
    router = make_query_router("knn:k=3").fit(toy_table())
    router.lam = lam
    shutil.rmtree(folder, ignore_errors=True)
    router.save(folder)


@pytest.fixture
def reloadable(tmp_path: Path):
    folder = tmp_path / "router"
    put_router(folder, lam=20.0)
    ports = {SMALL: free_port(), BIG: free_port()}
    fakes = [start_fake_backend(port, name) for name, port in ports.items()]
    args = ["llm", "serve", str(folder), "--api-key", CLIENT, "--admin-key", ADMIN]
    for name, port in ports.items():
        args += ["--backend", f"{name}=http://127.0.0.1:{port}"]
    (proxy,) = start_all([args], tmp_path)
    try:
        yield proxy, folder
    finally:
        stop_all([proxy])
        for fake in fakes:
            fake.kill()
            fake.wait()


def test_reload_swaps_the_router_and_a_broken_one_changes_nothing(reloadable) -> None:
    proxy, folder = reloadable
    assert routed(proxy.url) == BIG
    put_router(folder, lam=1000.0)
    assert routed(proxy.url) == BIG  # not read until asked
    assert reload(proxy.url, CLIENT).status_code == 401  # a client key is no admin key
    r = reload(proxy.url, ADMIN)
    assert r.status_code == 200 and r.json()["reloaded"] is True, r.text
    assert routed(proxy.url) == SMALL
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "router.json").write_text("{not json")
    r = reload(proxy.url, ADMIN)
    assert r.status_code == 422 and r.json()["error"]["code"] == "reload_failed", r.text
    assert "old one still serves" in r.json()["error"]["message"]
    assert routed(proxy.url) == SMALL  # the last good router still serves
    put_router(folder, lam=20.0)
    proxy.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while routed(proxy.url) != BIG:
        assert time.monotonic() < deadline, "SIGHUP did not reload"
        time.sleep(0.1)
    assert "reload (SIGHUP)" in proxy.log.read_text()


def test_without_an_admin_key_the_endpoint_is_off(router_dir: Path, tmp_path: Path) -> None:
    args = ["llm", "serve", str(router_dir), "--backend", f"{SMALL}=http://127.0.0.1:9"]
    (proxy,) = start_all([args], tmp_path)
    try:
        r = reload(proxy.url, "anything")
        assert r.status_code == 403 and "--admin-key" in r.json()["error"]["message"]
    finally:
        stop_all([proxy])
