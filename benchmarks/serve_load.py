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


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def setup(work: Path, models: list[str]) -> tuple[list[Proc], Proc]:
    """Backends and the proxy, started and ready."""
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
        (proxy,) = start_all(
            [
                [
                    "llm",
                    "serve",
                    str(work / "router"),
                    "--log",
                    str(work / "decisions.jsonl"),
                ]
                + [
                    a
                    for b, m in zip(backends, models, strict=True)
                    for a in ("--backend", f"{m}={b.url}")
                ]
            ],
            work / "logs",
            prefix="proxy",
        )
    except BaseException:
        stop_all(backends)
        raise
    return backends, proxy


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
                elif r.status_code == 503 or any('"error"' in line for line in lines):
                    outcome = "refused"
                else:
                    detail = f"HTTP {r.status_code}, {len(lines)} events"
        else:
            r = await client.post(base + path, json=body)
            backend = r.headers.get("x-dynroute-model")
            data = r.json()
            if r.status_code == 200 and data.get("choices"):
                outcome = "answered"
            elif r.status_code == 503 and "error" in data:
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
    proxy: Proc, backends: dict[str, Proc], queries: list[str], pairs: int
) -> dict[str, Any]:
    """Median per-pair difference: via the proxy minus directly to the same backend."""
    diffs, direct_ms, proxied_ms = [], [], []
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        for i in range(pairs + 5):  # the first 5 warm connections and caches up
            body = {"model": "auto", "prompt": queries[i % len(queries)], "max_tokens": 2}
            t0 = time.perf_counter()
            r = await client.post(proxy.url + "/v1/completions", json=body)
            t_proxy = time.perf_counter() - t0
            name = r.headers["x-dynroute-model"]
            t0 = time.perf_counter()
            d = await client.post(
                backends[name].url + "/v1/completions", json={**body, "model": name}
            )
            t_direct = time.perf_counter() - t0
            assert r.status_code == d.status_code == 200, (r.text, d.text)
            assert r.json()["choices"][0]["text"] == d.json()["choices"][0]["text"]
            if i >= 5:
                diffs.append((t_proxy - t_direct) * 1e3)
                direct_ms.append(t_direct * 1e3)
                proxied_ms.append(t_proxy * 1e3)
    return {
        "pairs": pairs,
        "p50_direct_ms": statistics.median(direct_ms),
        "p50_proxied_ms": statistics.median(proxied_ms),
        "p50_overhead_ms": statistics.median(diffs),
        "p90_overhead_ms": percentile(diffs, 90),
    }


async def load(
    proxy: Proc,
    queries: list[str],
    n: int,
    clients: int,
    max_tokens: int,
    on_sent: Any = None,
) -> tuple[list[dict[str, Any]], float]:
    """``n`` requests from ``clients`` concurrent workers; ``on_sent(i)`` after each send."""
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
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return results, time.perf_counter() - start


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


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from dynroute.llm import load_dataset

    _, test = load_dataset("routellm-gsm8k", seed=0)
    queries = [q[:400] for q in test.queries]  # well within the tiny models' 1024 tokens
    models = list(test.models)
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        t0 = time.perf_counter()
        backends, proxy = setup(Path(tmp), models)
        startup = time.perf_counter() - t0
        by_name = dict(zip(models, backends, strict=True))
        try:
            load_before = os.getloadavg()
            over = await overhead(proxy, by_name, queries, args.pairs)
            rows = [json.loads(x) for x in (Path(tmp) / "decisions.jsonl").read_text().splitlines()]
            inside = [r["latency_ms"] - r["upstream_ms"] for r in rows[5:]]
            over["p50_inside_proxy_ms"] = statistics.median(inside)
            print(f"overhead: {over}", flush=True)
            results, secs = await load(proxy, queries, args.requests, args.clients, args.max_tokens)
            steady = summary(results, secs)
            print(f"load: {steady}", flush=True)
            victim = max(steady["by_backend"], key=steady["by_backend"].get)
            kill_at = args.fault_requests // 3
            killed: dict[str, Any] = {}

            def on_sent(i: int) -> None:
                if i == kill_at and not killed:
                    by_name[victim].kill()
                    killed.update(backend=victim, after_requests_sent=i)

            results, secs = await load(
                proxy, queries[::-1], args.fault_requests, args.clients, args.max_tokens, on_sent
            )
            fault = {**summary(results, secs), "killed": killed}
            # From the proxy's log: answered although a backend failed first (retried).
            rows = [json.loads(x) for x in (Path(tmp) / "decisions.jsonl").read_text().splitlines()]
            fault["answered_after_a_failed_attempt"] = sum(
                1 for r in rows[-args.fault_requests :] if r["attempts"] and r["status"] == 200
            )
            print(f"fault: {fault}", flush=True)
            load_after = os.getloadavg()
            health = {
                m: httpx.get(b.url + "/health", timeout=5).json().get("batching")
                for m, b in by_name.items()
                if m != victim
            }
        finally:
            stop_all([proxy, *backends])
    return {
        "config": {
            "requests": args.requests,
            "clients": args.clients,
            "fault_requests": args.fault_requests,
            "pairs": args.pairs,
            "max_tokens": args.max_tokens,
            "backends": models,
            "router": "knn fitted on routellm-gsm8k, lambda 25",
            "models": "tiny random DynMoE (dynroute.serve.tiny), --threads 1, --max-batch 16",
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
            "startup_seconds": startup,
            "load_average_before_after": [load_before[0], load_after[0]],
            "cpu_count": os.cpu_count(),
        },
        "overhead": over,
        "load": steady,
        "fault": fault,
        "surviving_backend_batching": health,
    }


def table(result: dict[str, Any]) -> str:
    """Markdown rows for BENCHMARKS.md and docs/serving.md."""
    o, l, f = result["overhead"], result["load"], result["fault"]
    lines = [
        "| phase | requests | clients | throughput | p50 | p99 | answered | refused | lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    c = result["config"]["clients"]
    for name, s in (("load", l), (f"fault (killed {f['killed'].get('backend')})", f)):
        lines.append(
            f"| {name} | {s['requests']} | {c} | {s['throughput_rps']:.1f} req/s | "
            f"{s['p50_ms']:.0f} ms | {s['p99_ms']:.0f} ms | {s['answered']} | "
            f"{s['refused']} | {s['lost']} |"
        )
    lines.append("")
    lines.append(
        f"Proxy overhead over a direct call to the same backend ({o['pairs']} sequential pairs): "
        f"p50 {o['p50_overhead_ms']:.2f} ms (p90 {o['p90_overhead_ms']:.2f} ms); "
        f"direct p50 {o['p50_direct_ms']:.1f} ms, proxied p50 {o['p50_proxied_ms']:.1f} ms; "
        f"inside the proxy (its log: latency − time waiting for the backend) p50 "
        f"{o['p50_inside_proxy_ms']:.2f} ms."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--fault-requests", type=int, default=320)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result, indent=1)
    print(table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
