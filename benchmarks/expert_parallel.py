"""All-to-all volume and time per training step of an expert-parallel MoE layer, vs k̄.

    python benchmarks/expert_parallel.py [--world 2] [--tokens 1024] [--steps 5] [--quick]

Starts W CPU processes (gloo over 127.0.0.1). Every rank routes its own tokens
through one expert-parallel MoE layer (E/W experts per rank) and runs forward +
backward; ``dynroute.parallel.measure_comm`` counts the bytes each rank sends to
other ranks and the time spent inside the all-to-all calls (waiting for the
slowest rank included). Routers: top-k (k = 1, 2, 4) and top-p at several p, on
one router whose logits are sharpened (× --sharpness, default 3) to look like a trained
one (k̄ of top-p(0.4) ≈ 1.7, the paper's 1.72–1.87, instead of ≈ 4 at random init).
Writes benchmarks/results/expert_parallel.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.table import Table

from dynroute.common.jsonfile import write_json
from dynroute.layers import MoE
from dynroute.parallel import ParallelContext, measure_comm, shard_experts
from dynroute.parallel.spawn import run_ranks

SETTINGS: list[tuple[str, dict[str, Any], bool]] = [
    ("top_k", {"k": 1}, True),
    ("top_k", {"k": 2}, True),
    ("top_k", {"k": 4}, True),
    ("top_p", {"p": 0.3}, True),
    ("top_p", {"p": 0.4}, True),
    ("top_p", {"p": 0.5}, True),
    ("top_p", {"p": 0.6}, True),
    ("top_p", {"p": 0.4}, False),  # the same router at random init: flat, k̄ far above 2
]
"""(router, kwargs, sharpened): sharpened routers scale the gate by --sharpness."""


def label(router: str, kwargs: dict[str, Any], sharpened: bool) -> str:
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{router}({args})" + ("" if sharpened else " at init")


def replay(exchanges: list[tuple[list[int], list[int], int]], repeats: int = 3) -> float:
    """Seconds to redo a step's row exchanges (same split sizes), each started in sync.

    In the step itself an all-to-all also waits for the slowest rank's experts; the
    replay starts every call after a barrier, so it times the transfer alone. Each
    call is timed ``repeats`` times and the fastest kept (the machine is shared).
    """
    total = 0.0
    for out_splits, in_splits, row_bytes in exchanges:
        width = row_bytes // 4  # float32 rows
        send = torch.empty(sum(in_splits), width)
        recv = torch.empty(sum(out_splits), width)
        best = float("inf")
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_to_all_single(recv, send, out_splits, in_splits)
            best = min(best, time.perf_counter() - start)
        total += best
    return total


def measure(ctx: ParallelContext, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """On every rank: for each router, median per-step traffic and times."""
    rank, world = ctx.rank, ctx.world_size
    d, f, e, n = cfg["d_model"], cfg["d_ff"], cfg["experts"], cfg["tokens"]
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(100 + rank))
    records = []
    for router, kwargs, sharpened in SETTINGS:
        torch.manual_seed(0)  # same layer on every rank
        moe = MoE(d, f, e, router=router, **kwargs)
        if sharpened:
            with torch.no_grad():
                moe.gate.weight.mul_(cfg["sharpness"])
        ep = shard_experts(moe)
        steps: list[dict[str, float]] = []
        for step in range(cfg["warmup"] + cfg["steps"]):
            dist.barrier()  # start together, so waits measure this step only
            start = time.perf_counter()
            with measure_comm() as meter:
                y, aux = ep(x.requires_grad_(True))
                (y.square().mean() + aux.loss).backward()
            seconds = time.perf_counter() - start
            ep.zero_grad(set_to_none=True)
            x.grad = None
            transfer = replay(meter.exchanges)
            if step >= cfg["warmup"]:
                steps.append(
                    {
                        "step_s": seconds,
                        "a2a_s": meter.seconds,
                        "transfer_s": transfer,
                        "bytes_sent": meter.bytes_sent,
                        "rows_sent": meter.rows_sent,
                        "assignments": aux.routing.num_assignments,
                        # rows this rank's experts ran: the first exchange brings them in
                        "expert_rows": sum(meter.exchanges[0][0]),
                        "mean_experts": aux.mean_experts,
                        "calls": meter.calls,
                    }
                )
        med = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
        med.update(router=label(router, kwargs, sharpened), rank=rank, world=world)
        records.append(med)
    return records


def combine(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One record per router: means over ranks, plus the busiest rank's numbers."""
    out = []
    for rows in zip(*per_rank, strict=True):
        mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0] if k not in ("router",)}
        out.append(
            {
                "router": rows[0]["router"],
                "mean_experts": round(mean["mean_experts"], 3),
                "MB_sent_per_rank_step": round(mean["bytes_sent"] / 1e6, 3),
                # dynamic routing loads ranks unevenly: busiest rank's expert rows / mean
                "expert_load_max_over_mean": round(
                    max(r["expert_rows"] for r in rows) / max(mean["expert_rows"], 1), 3
                ),
                "a2a_ms_per_step": round(1e3 * mean["a2a_s"], 2),
                "transfer_ms_per_step": round(1e3 * mean["transfer_s"], 2),
                "step_ms": round(1e3 * max(r["step_s"] for r in rows), 1),
                "a2a_calls_per_step": int(mean["calls"]),
            }
        )
    return out


def table(records: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    for key in records[0]:
        t.add_column(key, justify="left" if key == "router" else "right")
    for r in records:
        t.add_row(*(str(v) for v in r.values()))
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per rank per step")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--sharpness", type=float, default=3.0, help="router logit scale")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, for a smoke run")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "expert_parallel.json"
    )
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.d_model, args.d_ff, args.steps, args.warmup = 128, 64, 128, 2, 1
    cfg = {
        k: getattr(args, k)
        for k in ("tokens", "d_model", "d_ff", "experts", "sharpness", "steps", "warmup")
    }
    start = time.perf_counter()
    per_rank = run_ranks(measure, args.world, (cfg,), timeout_s=580, threads=args.threads)
    records = combine(per_rank)
    title = (
        f"expert parallel: {args.world} ranks (gloo, CPU), {args.experts} experts, "
        f"{args.tokens} tokens/rank, d={args.d_model}, d_ff={args.d_ff}; medians of "
        f"{args.steps} fwd+bwd steps"
    )
    Console(width=200).print(table(records, title))
    meta: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "backend": "gloo",
        "world": args.world,
        "threads_per_rank": args.threads,
        "wall_s": round(time.perf_counter() - start, 1),
        **cfg,
        "notes": "MB_sent = bytes this rank sends to other ranks per step (forward + backward, "
        "count exchanges included); a2a_ms = time inside the step's all-to-all calls, waiting "
        "for the slowest rank included; transfer_ms = the same row exchanges replayed after a "
        "barrier each (transfer alone); step_ms = slowest rank's forward+backward; "
        "expert_load_max_over_mean = rows run by the busiest rank's experts / the mean.",
    }
    # Transfer time against volume: intercept = per-call latency, slope = 1 / bandwidth.
    mb = np.array([r["MB_sent_per_rank_step"] for r in records])
    ms = np.array([r["transfer_ms_per_step"] for r in records])
    slope, intercept = np.polyfit(mb, ms, 1)
    meta["transfer_fit"] = {
        "ms_per_MB": round(float(slope), 3),
        "ms_at_0_MB": round(float(intercept), 2),
        "corr": round(float(np.corrcoef(mb, ms)[0, 1]), 3),
    }
    print(
        f"transfer ms ≈ {intercept:.2f} + {slope:.3f} x MB sent "
        f"(corr {meta['transfer_fit']['corr']})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"meta": meta, "records": records})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
