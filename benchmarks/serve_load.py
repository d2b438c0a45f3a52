"""Load and fault test of ``dynroute llm serve`` in front of local ``dynroute serve`` backends.

Usage: ``python benchmarks/serve_load.py [--requests 512 --clients 16 --fault-requests 320]``.

Starts two ``dynroute serve`` processes (tiny random models named after the two models
of the shipped ``routellm-gsm8k`` table) and the routing proxy with a ``knn`` router
fitted on that table, all on 127.0.0.1, then measures, in one run:

1. **overhead**: ``--pairs`` sequential pairs of the same request sent through the proxy
   (``model: auto``) and directly to the backend the proxy chose; the proxy's overhead is
   the median of the per-pair differences (measured by the client: it includes the extra
   process hop and the OS scheduling it waits for), and, from the proxy's decision log,
   the time spent inside the proxy (its latency minus the time waiting for the backend);
2. **load**: ``--requests`` requests (GSM8K test questions; chat and completions, one in
   four streamed) from ``--clients`` concurrent clients: throughput, p50/p99 latency,
   errors;
3. **fault**: ``--fault-requests`` more requests from the same clients; once a third of
   them have been sent, the backend that answered most is killed (SIGKILL). Every request
   must end answered (200 and, when streamed, ``[DONE]``) or cleanly refused (an OpenAI
   error JSON or error event); "lost" counts timeouts, dropped connections and garbled
   answers.

Writes ``benchmarks/results/serve_load.json``; BENCHMARKS.md section 11 and
docs/serving.md show its numbers. Takes 2–4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from dynroute.common.jsonfile import write_json
from serving_procs import Proc, start_all, stop_all

RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"
CLIENT_TIMEOUT_S = 60.0
API_KEY = "sk-serve-load"
KEY_HEADERS = {"authorization": f"Bearer {API_KEY}"}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def proxy_args(work: Path, name: str, backends: list[Proc], models: list[str]) -> list[str]:
    """``dynroute llm serve`` of the router in ``work``, logging to ``work/NAME.jsonl``."""
    pairs = [
        a for b, m in zip(backends, models, strict=True) for a in ("--backend", f"{m}={b.url}")
    ]
    return ["llm", "serve", str(work / "router"), "--log", str(work / f"{name}.jsonl"), *pairs]


def setup(work: Path, models: list[str]) -> tuple[list[Proc], dict[str, Proc]]:
    """Backends and two proxies of the same router, started and ready: ``open`` (no key)
    and ``keyed`` (``--api-key``: every request also pays for the key check)."""
    from dynroute.llm import load_dataset, make_query_router
    from dynroute.serve.tiny import write_tiny_model

    train, _ = load_dataset("routellm-gsm8k", seed=0)
    router = make_query_router("knn").fit(train)
    router.lam = 25.0  # sends a part of the traffic to each model (see "by_backend")
    router.save(work / "router")
    dirs = [
        write_tiny_model(work / f"model{i}", seed=i, max_seq_len=1024) for i in range(len(models))
    ]
    backends = start_all(
        [
            ["serve", str(d), "--name", m, "--threads", "1", "--max-batch", "16"]
            for d, m in zip(dirs, models, strict=True)
        ],
        work / "logs",
        prefix="backend",
    )
    try:
        open_, keyed = start_all(
            [
                proxy_args(work, "open", backends, models),
                [*proxy_args(work, "keyed", backends, models), "--api-key", API_KEY],
            ],
            work / "logs",
            prefix="proxy",
        )
    except BaseException:
        stop_all(backends)
        raise
    return backends, {"open": open_, "keyed": keyed}


def request_body(query: str, i: int, max_tokens: int) -> tuple[str, dict[str, Any]]:
    """Every other request is chat; one in four is streamed."""
    stream = i % 4 == 3
    if i % 2:
        body = {"model": "auto", "messages": [{"role": "user", "content": query}]}
        path = "/v1/chat/completions"
    else:
        body, path = {"model": "auto", "prompt": query}, "/v1/completions"
    return path, {**body, "max_tokens": max_tokens, "stream": stream}


async def send(
    client: httpx.AsyncClient, base: str, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    """One request: its outcome ("answered", "refused", "lost"), latency, backend."""
    start = time.perf_counter()
    outcome, backend, detail = "lost", None, ""
    try:
        if body["stream"]:
            async with client.stream("POST", base + path, json=body) as r:
                backend = r.headers.get("x-dynroute-model")
                lines = [line async for line in r.aiter_lines() if line.startswith("data:")]
                if r.status_code == 200 and lines and lines[-1] == "data: [DONE]":
                    outcome = "answered"
                elif r.status_code in (429, 503) or any('"error"' in line for line in lines):
                    outcome = "refused"
                else:
                    detail = f"HTTP {r.status_code}, {len(lines)} events"
        else:
            r = await client.post(base + path, json=body)
            backend = r.headers.get("x-dynroute-model")
            data = r.json()
            if r.status_code == 200 and data.get("choices"):
                outcome = "answered"
            elif r.status_code in (429, 503) and "error" in data:
                outcome = "refused"
            else:
                detail = f"HTTP {r.status_code}: {str(data)[:120]}"
    except (httpx.HTTPError, json.JSONDecodeError) as err:
        detail = f"{type(err).__name__}: {err}"
    return {
        "outcome": outcome,
        "stream": bool(body["stream"]),
        "ms": (time.perf_counter() - start) * 1e3,
        "backend": backend,
        "detail": detail,
    }


async def overhead(
    proxies: dict[str, Proc], backends: dict[str, Proc], queries: list[str], pairs: int
) -> dict[str, Any]:
    """Median per-pair difference: via each proxy minus directly to the same backend, the
    three calls of a pair one after the other (open proxy, keyed proxy, direct)."""
    ms: dict[str, list[float]] = {"direct": [], "open": [], "keyed": []}
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        for i in range(pairs + 5):  # the first 5 warm connections and caches up
            body = {"model": "auto", "prompt": queries[i % len(queries)], "max_tokens": 2}
            answers, took = {}, {}
            for name, proc in proxies.items():
                t0 = time.perf_counter()
                answers[name] = await client.post(
                    proc.url + "/v1/completions", json=body, headers=KEY_HEADERS
                )
                took[name] = time.perf_counter() - t0
            chosen = answers["open"].headers["x-dynroute-model"]
            t0 = time.perf_counter()
            d = await client.post(
                backends[chosen].url + "/v1/completions", json={**body, "model": chosen}
            )
            took["direct"] = time.perf_counter() - t0
            texts = {r.json()["choices"][0]["text"] for r in (*answers.values(), d)}
            assert len(texts) == 1, [r.text for r in (*answers.values(), d)]
            if i >= 5:
                for name, t in took.items():
                    ms[name].append(t * 1e3)
    diffs = {n: [p - d for p, d in zip(ms[n], ms["direct"], strict=True)] for n in proxies}
    return {
        "pairs": pairs,
        "p50_direct_ms": statistics.median(ms["direct"]),
        "p50_proxied_ms": statistics.median(ms["open"]),
        "p50_overhead_ms": statistics.median(diffs["open"]),
        "p90_overhead_ms": percentile(diffs["open"], 90),
        "p50_keyed_proxied_ms": statistics.median(ms["keyed"]),
        "p50_keyed_overhead_ms": statistics.median(diffs["keyed"]),
        "p90_keyed_overhead_ms": percentile(diffs["keyed"], 90),
    }


async def load(
    proxy: Proc,
    queries: list[str],
    n: int,
    clients: int,
    max_tokens: int,
    on_sent: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """``n`` requests from ``clients`` concurrent workers (closed loop: each sends its next
    request when its last is answered); ``on_sent(i)`` after each send."""
    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        todo.put_nowait(i)
    results: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client: httpx.AsyncClient) -> None:
        while not todo.empty():
            i = todo.get_nowait()
            if on_sent is not None:
                on_sent(i)
            path, body = request_body(queries[i % len(queries)], i, max_tokens)
            results.append(await send(client, proxy.url, path, body))

    start = time.perf_counter()
    async with httpx.AsyncClient(
        timeout=CLIENT_TIMEOUT_S, limits=limits, headers=headers
    ) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return results, time.perf_counter() - start


def arrival_gaps(n: int, rate: float, shape: float, seed: int = 0) -> list[float]:
    """``n`` gaps (s) between arrivals at ``rate`` per second on average: Gamma-distributed
    with this ``shape`` (1: Poisson arrivals; below 1: bursts and lulls, as BurstGPT found
    in real chat traffic; the coefficient of variation is 1/sqrt(shape)).

    Example:
        >>> gaps = arrival_gaps(20000, rate=50.0, shape=0.25)
        >>> round(sum(gaps) / len(gaps), 3), round(statistics.pstdev(gaps) * 50, 1)
        (0.02, 2.0)
    """
    draw = random.Random(seed)
    return [draw.gammavariate(shape, 1.0 / (shape * rate)) for _ in range(n)]


async def open_loop(
    proxy: Proc, queries: list[str], gaps: list[float], max_tokens: int
) -> tuple[list[dict[str, Any]], float]:
    """One request at each arrival time, whether or not earlier ones were answered (open
    loop: a burst queues up in the server, as real traffic does)."""
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=64)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        tasks = []
        due = start
        for i, gap in enumerate(gaps):
            due += gap
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            path, body = request_body(queries[i % len(queries)], i, max_tokens)
            tasks.append(asyncio.create_task(send(client, proxy.url, path, body)))
        results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - start


async def bursty(
    proxy: Proc, queries: list[str], n: int, rate: float, max_tokens: int
) -> dict[str, Any]:
    """The same ``n`` requests at the same mean ``rate``, Poisson then Gamma(0.25) arrivals."""
    out: dict[str, Any] = {}
    for name, shape in (("poisson", 1.0), ("gamma_0.25", 0.25)):
        results, secs = await open_loop(proxy, queries, arrival_gaps(n, rate, shape), max_tokens)
        out[name] = {**summary(results, secs), "shape": shape, "rate_rps": rate}
    return out


def summary(results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    ok = [r["ms"] for r in results if r["outcome"] == "answered"]
    by: dict[str, int] = {}
    for r in results:
        if r["outcome"] == "answered":
            by[r["backend"]] = by.get(r["backend"], 0) + 1
    return {
        "requests": len(results),
        "seconds": seconds,
        "throughput_rps": len(results) / seconds,
        "p50_ms": percentile(ok, 50) if ok else None,
        "p99_ms": percentile(ok, 99) if ok else None,
        "answered": sum(r["outcome"] == "answered" for r in results),
        "refused": sum(r["outcome"] == "refused" for r in results),
        "refused_streams": sum(r["outcome"] == "refused" and r["stream"] for r in results),
        "lost": sum(r["outcome"] == "lost" for r in results),
        "errors": sum(r["outcome"] != "answered" for r in results),
        "by_backend": by,
        "lost_details": [r["detail"] for r in results if r["outcome"] == "lost"][:5],
    }


PRICES = """
[backends.gpt-4-1106-preview]
prompt_price = 10.0
completion_price = 30.0
[backends.mixtral-8x7b-instruct]
prompt_price = 0.6
completion_price = 0.6
"""


def budget_proxy(work: Path, backends: list[Proc], models: list[str], usd: float) -> Proc:
    """A proxy whose one key (``budget-key``) may spend ``usd`` a day, kept in SQLite."""
    (work / "prices.toml").write_text(PRICES)
    keys = f'[keys.budget]\nkey = "budget-key"\nusd_per_day = {usd!r}\n'
    (work / "budget-keys.toml").write_text(keys)
    args = proxy_args(work, "budget", backends, models)
    args += ["--prices", str(work / "prices.toml"), "--api-key-file"]
    args += [str(work / "budget-keys.toml"), "--db", f"sqlite:///{work / 'budget.db'}"]
    (proxy,) = start_all([args], work / "logs", prefix="budget")
    return proxy


async def budget_run(
    work: Path, backends: list[Proc], models: list[str], queries: list[str], args: Any
) -> dict[str, Any]:
    """A key hits its daily limit mid-run: what it spent against the limit; then the proxy
    is SIGKILLed and started again on the same database: is the key still refused?"""
    from dynroute.serve.store import open_store

    headers = {"authorization": "Bearer budget-key"}
    proxy = budget_proxy(work, backends, models, args.budget_usd)
    try:
        results, secs = await load(
            proxy, queries, args.budget_requests, args.clients, args.max_tokens, headers=headers
        )
        proxy.kill()  # as a crash: whatever it had not written is lost
        proxy = budget_proxy(work, backends, models, args.budget_usd)
        after, _ = await load(proxy, queries, 4, 1, args.max_tokens, headers=headers)
    finally:
        proxy.stop()
    costs = [r["cost"] for r in log_rows(work, "budget") if r.get("cost") is not None]
    store = open_store(f"sqlite:///{work / 'budget.db'}")
    try:
        spent = store.usage("budget", time.time()).usd_day
    finally:
        store.close()
    return {
        **summary(results, secs),
        "limit_usd": args.budget_usd,
        "spent_usd": spent,
        "over_limit_usd": spent - args.budget_usd,
        "largest_request_usd": max(costs) if costs else None,
        "after_restart": [r["outcome"] for r in after],
    }


async def drain_run(proxy: Proc, queries: list[str], n: int, max_tokens: int) -> dict[str, Any]:
    """``n`` streams; once ``0.8·n`` have their response headers (in flight), SIGTERM the
    proxy; a request sent during the drain must be refused (503); every stream must end
    with ``[DONE]``; the proxy must exit 0 once they have."""
    started = asyncio.Event()
    in_flight = 0
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)

    async def stream(client: httpx.AsyncClient, i: int) -> dict[str, Any]:
        nonlocal in_flight
        body = {"model": "auto", "prompt": queries[i % len(queries)], "stream": True}
        t0, outcome, backend = time.perf_counter(), "lost", None
        try:
            async with client.stream(
                "POST", proxy.url + "/v1/completions", json={**body, "max_tokens": max_tokens}
            ) as r:
                backend = r.headers.get("x-dynroute-model")
                in_flight += 1
                if in_flight >= 0.8 * n:
                    started.set()
                lines = [x async for x in r.aiter_lines() if x.startswith("data:")]
                if r.status_code == 200 and lines and lines[-1] == "data: [DONE]":
                    outcome = "answered"
        except httpx.HTTPError:
            pass
        ms = (time.perf_counter() - t0) * 1e3
        return {"outcome": outcome, "stream": True, "ms": ms, "backend": backend, "detail": ""}

    async with httpx.AsyncClient(
        timeout=CLIENT_TIMEOUT_S, limits=limits, headers=KEY_HEADERS
    ) as client:
        tasks = [asyncio.create_task(stream(client, i)) for i in range(n)]
        await asyncio.wait_for(started.wait(), CLIENT_TIMEOUT_S)
        t_term = time.perf_counter()
        proxy.popen.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        path, body = request_body(queries[0], 0, max_tokens)
        during = await send(client, proxy.url, path, body)
        results = list(await asyncio.gather(*tasks))
    code = await asyncio.to_thread(proxy.popen.wait, CLIENT_TIMEOUT_S)
    return {
        **summary(results, time.perf_counter() - t_term),
        "in_flight_at_sigterm": in_flight,
        "request_during_drain": during["outcome"],
        "exit_code": code,
        "exit_seconds_after_sigterm": time.perf_counter() - t_term,
    }


def log_rows(work: Path, name: str) -> list[dict[str, Any]]:
    """The decision log of proxy ``name`` (``open`` or ``keyed``)."""
    return [json.loads(x) for x in (work / f"{name}.jsonl").read_text().splitlines()]


async def fault_run(
    proxy: Proc, by_name: dict[str, Proc], victim: str, queries: list[str], args: Any
) -> dict[str, Any]:
    """``--fault-requests`` from the same clients; ``victim`` is SIGKILLed a third of the way."""
    kill_at = args.fault_requests // 3
    killed: dict[str, Any] = {}

    def on_sent(i: int) -> None:
        if i == kill_at and not killed:
            by_name[victim].kill()
            killed.update(backend=victim, after_requests_sent=i)

    results, secs = await load(
        proxy, queries[::-1], args.fault_requests, args.clients, args.max_tokens, on_sent
    )
    return {**summary(results, secs), "killed": killed}


async def phases(
    work: Path, proxies: dict[str, Proc], by_name: dict[str, Proc], queries: list[str], args: Any
) -> dict[str, Any]:
    """Overhead, steady load (without and with keys), bursty arrivals, then the fault."""
    out: dict[str, Any] = {}
    over = await overhead(proxies, by_name, queries, args.pairs)
    inside = [r["latency_ms"] - r["upstream_ms"] for r in log_rows(work, "open")[5:]]
    over["p50_inside_proxy_ms"] = statistics.median(inside)
    inside = [r["latency_ms"] - r["upstream_ms"] for r in log_rows(work, "keyed")[5:]]
    over["p50_inside_keyed_proxy_ms"] = statistics.median(inside)
    out["overhead"] = over
    print(f"overhead: {over}", flush=True)
    n, c, m = args.requests, args.clients, args.max_tokens
    out["load"] = summary(*await load(proxies["open"], queries, n, c, m))
    print(f"load: {out['load']}", flush=True)
    keyed = await load(proxies["keyed"], queries, n, c, m, headers=KEY_HEADERS)
    out["load_with_keys"] = summary(*keyed)
    print(f"load with keys: {out['load_with_keys']}", flush=True)
    out["bursty"] = await bursty(proxies["open"], queries, args.burst_requests, args.rate, m)
    print(f"bursty: {out['bursty']}", flush=True)
    out["budget"] = await budget_run(work, list(by_name.values()), list(by_name), queries, args)
    print(f"budget: {out['budget']}", flush=True)
    out["drain"] = await drain_run(proxies["keyed"], queries, args.drain_streams, 32)
    print(f"drain: {out['drain']}", flush=True)
    victim = max(out["load"]["by_backend"], key=out["load"]["by_backend"].get)
    fault = await fault_run(proxies["open"], by_name, victim, queries, args)
    # From the proxy's log: answered although a backend failed first (retried).
    rows = log_rows(work, "open")[-args.fault_requests :]
    fault["answered_after_a_failed_attempt"] = sum(
        1 for r in rows if r["attempts"] and r["status"] == 200
    )
    out["fault"] = fault
    print(f"fault: {fault}", flush=True)
    out["surviving_backend_batching"] = {
        name: httpx.get(b.url + "/health", timeout=5).json().get("batching")
        for name, b in by_name.items()
        if name != victim
    }
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from dynroute.llm import load_dataset

    _, test = load_dataset("routellm-gsm8k", seed=0)
    queries = [q[:400] for q in test.queries]  # well within the tiny models' 1024 tokens
    models = list(test.models)
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        t0 = time.perf_counter()
        backends, proxies = setup(Path(tmp), models)
        startup = time.perf_counter() - t0
        try:
            load_before = os.getloadavg()
            by_name = dict(zip(models, backends, strict=True))
            result = await phases(Path(tmp), proxies, by_name, queries, args)
            load_after = os.getloadavg()
        finally:
            stop_all([*proxies.values(), *backends])
    config = {
        **{k: v for k, v in vars(args).items() if k != "out"},
        "backends": models,
        "router": "knn fitted on routellm-gsm8k, lambda 25",
        "models": "tiny random DynMoE (dynroute.serve.tiny), --threads 1, --max-batch 16",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "startup_seconds": startup,
        "load_average_before_after": [load_before[0], load_after[0]],
        "cpu_count": os.cpu_count(),
    }
    return {"config": config, **result}


def table(result: dict[str, Any]) -> str:
    """Markdown rows for BENCHMARKS.md and docs/serving.md."""
    o, f, c = result["overhead"], result["fault"], result["config"]["clients"]
    lines = [
        "| phase | requests | clients | throughput | p50 | p99 | answered | refused | lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    b = result["bursty"]
    rows = [
        ("load", c, result["load"]),
        ("load, with an API key", c, result["load_with_keys"]),
        *(
            (f"{name} arrivals, {s['rate_rps']:g} req/s (open loop)", "—", s)
            for name, s in b.items()
        ),
        (f"fault (killed {f['killed'].get('backend')})", c, f),
    ]
    for name, clients, s in rows:
        lines.append(
            f"| {name} | {s['requests']} | {clients} | {s['throughput_rps']:.1f} req/s | "
            f"{s['p50_ms']:.0f} ms | {s['p99_ms']:.0f} ms | {s['answered']} | "
            f"{s['refused']} | {s['lost']} |"
        )
    lines.append("")
    lines.append(
        f"Proxy overhead over a direct call to the same backend ({o['pairs']} sequential pairs): "
        f"p50 {o['p50_overhead_ms']:.2f} ms (p90 {o['p90_overhead_ms']:.2f} ms); with an API "
        f"key p50 {o['p50_keyed_overhead_ms']:.2f} ms (p90 {o['p90_keyed_overhead_ms']:.2f} ms); "
        f"direct p50 {o['p50_direct_ms']:.1f} ms, proxied p50 {o['p50_proxied_ms']:.1f} ms; "
        f"inside the proxy (its log: latency − time waiting for the backend) p50 "
        f"{o['p50_inside_proxy_ms']:.2f} ms, with a key {o['p50_inside_keyed_proxy_ms']:.2f} ms."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--fault-requests", type=int, default=320)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--burst-requests", type=int, default=400)
    parser.add_argument("--budget-requests", type=int, default=96)
    parser.add_argument("--budget-usd", type=float, default=0.02, help="the key's daily limit")
    parser.add_argument("--drain-streams", type=int, default=64)
    parser.add_argument("--rate", type=float, default=40.0, help="mean arrivals per second")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result, indent=1)
    print(table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
