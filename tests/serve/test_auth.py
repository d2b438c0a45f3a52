"""API keys on both servers, with real processes on 127.0.0.1: 401 without a key (OpenAI's
error shape), /health open, the proxy calling a keyed backend with its own key (never the
client's), and a keyless non-loopback --host refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve_helpers import BIG, SMALL
from serving_procs import Proc, start_all, stop_all

CLIENT_KEY, BACKEND_KEY = "client-key-1", "backend-key-7"
COMPLETION = {"prompt": "def add(a, b):", "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def keyed(
    tiny_models: dict[str, Path], router_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Proc]]:
    """A model server that needs BACKEND_KEY, and a proxy over it that needs CLIENT_KEY
    (from a keys file) and calls the backend with BACKEND_KEY (from the prices file)."""
    root = tmp_path_factory.mktemp("auth")
    (root / "keys.txt").write_text(f"# clients\n{CLIENT_KEY}\n")
    (root / "prices.toml").write_text(
        f'[backends.{SMALL}]\napi_key_env = "TEST_BACKEND_KEY"\n'
        f'[backends.{BIG}]\napi_key_env = "TEST_BACKEND_KEY"\n'
    )
    serve = ["serve", "--threads", "1", str(tiny_models[SMALL]), "--name", SMALL]
    limits = ["--max-body-bytes", "4000", "--max-prompts", "2"]  # the flags reach the app
    (backend,) = start_all(
        [[*serve, "--api-key", BACKEND_KEY, *limits]], root / "logs", prefix="keyed"
    )
    os.environ["TEST_BACKEND_KEY"] = BACKEND_KEY  # the proxy's own key to its backend
    proxies: list[Proc] = []
    try:
        proxy = [
            "llm", "serve", str(router_dir), "--prices", str(root / "prices.toml"),
            "--backend", f"{SMALL}={backend.url}", "--backend", f"{BIG}={backend.url}",
            "--api-key-file", str(root / "keys.txt"),
        ]  # fmt: skip
        proxies = start_all([proxy], root / "logs", prefix="keyed_proxy")
        yield {"backend": backend, "proxy": proxies[0]}
    finally:
        os.environ.pop("TEST_BACKEND_KEY", None)
        stop_all([*proxies, backend])


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("which", ["backend", "proxy"])
def test_no_key_is_401_in_openai_shape_and_health_stays_open(
    keyed: dict[str, Proc], which: str
) -> None:
    proc = keyed[which]
    key = BACKEND_KEY if which == "backend" else CLIENT_KEY
    assert httpx.get(proc.url + "/health").status_code == 200
    for headers in ({}, _bearer("wrong"), {"Authorization": key}, _bearer(key + "x")):
        answer = httpx.get(proc.url + "/v1/models", headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "invalid_api_key" and "Bearer" in error["message"]
        assert answer.headers["www-authenticate"] == "Bearer"
        post = httpx.post(proc.url + "/v1/completions", json={"model": SMALL, **COMPLETION})
        assert post.status_code == 401
    assert httpx.get(proc.url + "/v1/models", headers=_bearer(key)).status_code == 200
    assert httpx.get(proc.url + "/metrics").status_code == 401  # behind the key too
    metrics = httpx.get(proc.url + "/metrics", headers=_bearer(key))
    assert 'dynroute_requests_total{path="/v1/models",status="401"}' in metrics.text


def test_the_openai_client_with_the_key_is_served_through_the_proxy(
    keyed: dict[str, Proc],
) -> None:
    """The proxy answers its client (CLIENT_KEY) by calling the keyed backend with its own
    key: the client's key is not the backend's, so forwarding it would be a 401."""
    from openai import OpenAI

    client = OpenAI(base_url=keyed["proxy"].url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    done = client.completions.create(model="auto", prompt="what is 1 plus 2", max_tokens=3)
    assert done.choices[0].text is not None and done.usage.completion_tokens >= 1
    direct = OpenAI(base_url=keyed["backend"].url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(Exception, match="401"):
        direct.completions.create(model=SMALL, prompt="x", max_tokens=1)


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "MODEL", "--host", "0.0.0.0"],
        ["llm", "serve", "ROUTER", "--backend", f"{SMALL}=http://127.0.0.1:1", "--host", "::"],
    ],
    ids=["serve", "llm serve"],
)
def test_a_keyless_non_loopback_host_is_refused_in_one_line(
    tiny_models: dict[str, Path], router_dir: Path, args: list[str]
) -> None:
    args = [{"MODEL": str(tiny_models[SMALL]), "ROUTER": str(router_dir)}.get(a, a) for a in args]
    env = {k: v for k, v in os.environ.items() if k != "DYNROUTE_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "dynroute.cli", *args, "--port", "1"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "--allow-no-key" in line and "--api-key" in line


def test_the_limit_flags_reach_the_model_server(keyed: dict[str, Proc]) -> None:
    url, headers = keyed["backend"].url + "/v1/completions", _bearer(BACKEND_KEY)
    big = httpx.post(url, headers=headers, json={"model": SMALL, "prompt": "x" * 5000})
    assert big.status_code == 413 and big.json()["error"]["message"], big.text
    many = httpx.post(url, headers=headers, json={"model": SMALL, "prompt": ["a", "b", "c"]})
    assert many.status_code == 400 and "2" in many.json()["error"]["message"], many.text
