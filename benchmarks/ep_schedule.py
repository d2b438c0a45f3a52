"""Scheduled expert parallelism on this machine: measured step times against the planner's.

    PYTHONPATH=src python benchmarks/ep_schedule.py [--procs 2 4] [--tokens 1024] [--steps 6]

For each process count (gloo over 127.0.0.1, one thread a rank) one launch:

1. profiles the job as ``dynroute profile`` does (``profile_ranks``: collectives per link,
   expert GEMMs forward and backward, per-row tasks; with 4 processes also as 2 nodes x 2,
   for the intra- and inter-node links);
2. trains a workload shaped as the planner models a layer — L blocks of a dense MLP
   (4·d² parameters) then an MoE layer (E = 2 experts a rank, SwiGLU, top-2) — one
   forward + backward + gradient sync a step, for every cell: chunks r in {1, 2, 4},
   hierarchical exchange off / on (4 processes: 2 nodes x 2), gradient all-reduce in DDP
   buckets / partitioned into the modelled backward's idle link time;
3. predicts every cell with ``planner.simulate`` on ``Cluster.from_profile`` of that
   profile (flat cells: the flat fits; hierarchical cells: the 2-node fits).

A cell's time is the median over --steps timed steps (after 2 warm-up steps) of the
slowest rank's step. Prints measured and predicted side by side, and r = 1 against the
planner's chosen r. Writes benchmarks/results/ep_schedule.json. On 2 CPU cores compute
and communication share the cores, so overlap gains little here: the figure that matters
on this machine is the planner's agreement with measurement.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dynroute.common.jsonfile import write_json
from dynroute.layers import MoE
from dynroute.parallel import (
    FlatExchange,
    HierarchicalExchange,
    ParallelContext,
    set_ep_schedule,
    shard_model_experts,
    topology,
    wrap_ddp,
)
from dynroute.parallel.autoschedule import idle_link_gaps, model_shape
from dynroute.parallel.partition import (
    dense_parameters,
    parameter_bytes,
    plan_partitions,
    wrap_partitioned,
)
from dynroute.parallel.planner import Cluster, Layout, choose_chunks, simulate
from dynroute.parallel.profile import machine_name, profile_ranks
from dynroute.parallel.spawn import run_ranks

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "ep_schedule.json"
CHUNKS = (1, 2, 4)
D_MODEL, D_FF, LAYERS, K = 256, 512, 2, 2


class Block(nn.Module):
    """A dense MLP (4·d² parameters, the planner's dense part) then an MoE layer."""

    def __init__(self, d: int, d_ff: int, experts: int) -> None:
        super().__init__()
        self.dense = nn.Sequential(nn.Linear(d, 2 * d, bias=False), nn.Linear(2 * d, d, bias=False))
        self.moe = MoE(d, d_ff, experts, router="top_k", k=K)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x + self.dense(x)
        y, aux = self.moe(h)
        return h + y, aux.loss


class Workload(nn.Module):
    """``LAYERS`` blocks; the loss is the mean square of the output plus the aux losses."""

    def __init__(self, experts: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(D_MODEL, D_FF, experts) for _ in range(LAYERS))

    def forward(self, x: Tensor) -> Tensor:
        loss = x.new_zeros(())
        for block in self.blocks:
            x, aux = block(x)
            loss = loss + aux
        return x.square().mean() + loss


def slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def time_cell(run: nn.Module, x: Tensor, steps: int) -> float:
    """Median over ``steps`` of the slowest rank's forward + backward + gradient sync."""
    times = []
    for step in range(steps + 2):
        run.zero_grad(set_to_none=True)
        dist.barrier()
        start = time.perf_counter()
        run(x).backward()
        finish = getattr(run, "finish", None)
        if finish is not None:
            finish()
        took = slowest(time.perf_counter() - start)
        if step >= 2:
            times.append(took)
    return statistics.median(times)


def build(ctx: ParallelContext, experts: int) -> nn.Module:
    torch.manual_seed(0)
    return shard_model_experts(Workload(experts), dist.new_group())


def predict(profile: Any, shape: Any, procs: int, cell: dict[str, Any]) -> float:
    layout = Layout(procs, 1, cell["chunks"], cell["hierarchical"], cell["partitioned"])
    return simulate(shape, cluster_for(profile, cell["hierarchical"]), layout).step_time_s


def cluster_for(profile: Any, hierarchical: bool) -> Cluster:
    """The 2-node fits for a hierarchical cell, the flat ones (one node) otherwise."""
    if hierarchical:
        return Cluster.from_profile(profile)
    flat = dataclasses.replace(profile, nnodes=1, collectives={"flat": profile.collectives["flat"]})
    return Cluster.from_profile(flat)


def measure(ctx: ParallelContext, tokens: int, steps: int) -> dict[str, Any] | None:
    """Every rank: the profile, then every cell measured and predicted (rank 0 returns)."""
    procs = ctx.world_size
    experts = 2 * procs
    nnodes = 2 if procs >= 4 else 1
    local = experts // procs
    gemm = ((64, 256, tokens * K), D_MODEL, D_FF, local)
    profile = profile_ranks(ctx, nnodes, (1 << 12, 1 << 15, 1 << 18, 1 << 20), 5, gemm)
    base = build(ctx, experts)
    shape, _ = model_shape(base, 1, tokens)  # no attention: seq 1, a batch of tokens
    torch.manual_seed(1 + ctx.rank)
    x = torch.randn(tokens, D_MODEL)
    topo = topology(2) if nnodes > 1 else None
    cells = []
    for hierarchical in (False, True) if topo else (False,):
        for partitioned in (False, True):
            for chunks in CHUNKS:
                model = copy.deepcopy(base)
                exchange = HierarchicalExchange(topo) if hierarchical and topo else FlatExchange()
                set_ep_schedule(model, chunks, exchange)
                cell = {"procs": procs, "chunks": chunks, "hierarchical": hierarchical,
                        "partitioned": partitioned}  # fmt: skip
                cluster = cluster_for(profile, hierarchical)
                layout = Layout(procs, 1, chunks, hierarchical, partitioned)
                if partitioned:
                    sizes = parameter_bytes([p for _, p in dense_parameters(model)])
                    fit = profile.collectives["flat"]["all_reduce"].time
                    plan = plan_partitions(sizes, idle_link_gaps(shape, cluster, layout), fit)
                    run = wrap_partitioned(model, plan)
                    cell["partitions"] = len(plan)
                else:
                    run = wrap_ddp(model)
                cell["measured_s"] = time_cell(run, x, steps)
                cell["predicted_s"] = predict(profile, shape, procs, cell)
                cell["error"] = cell["predicted_s"] / cell["measured_s"] - 1
                cells.append(cell)
    flat = Layout(procs, 1, hierarchical=False, partitioned=False)
    chosen = choose_chunks(shape, cluster_for(profile, False), flat)
    if not ctx.is_main:
        return None
    return {"procs": procs, "tokens_per_rank": tokens, "experts": experts,
            "chosen_chunks": chosen, "profile": profile.to_dict(), "cells": cells}  # fmt: skip


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| procs | r | hierarchical | gradient sync | measured ms | predicted ms | error |",
        "|---:|---:|---|---|---:|---:|---:|",
    ]
    for run in runs:
        for c in run["cells"]:
            sync = f"partitioned ({c['partitions']})" if c["partitioned"] else "DDP buckets"
            lines.append(
                f"| {c['procs']} | {c['chunks']} | {'on' if c['hierarchical'] else 'off'} | "
                f"{sync} | {1e3 * c['measured_s']:.1f} | {1e3 * c['predicted_s']:.1f} | "
                f"{100 * c['error']:+.0f}% |"
            )
    return "\n".join(lines)


def ratios(runs: list[dict[str, Any]]) -> str:
    """r = 1 vs the planner's r, hierarchical vs flat, partitioned vs DDP (measured)."""
    out = []
    for run in runs:
        cells = {(c["chunks"], c["hierarchical"], c["partitioned"]): c for c in run["cells"]}
        p, r = run["procs"], run["chosen_chunks"][0]
        base = cells[(1, False, False)]["measured_s"]
        out.append(f"{p} procs: chosen r = {r}: r=1 / r={r} = "
                   f"{base / cells[(r, False, False)]['measured_s']:.2f}x measured")  # fmt: skip
        out.append(f"{p} procs: DDP / partitioned (r=1) = "
                   f"{base / cells[(1, False, True)]['measured_s']:.2f}x measured")  # fmt: skip
        if (1, True, False) in cells:
            hier = cells[(1, True, False)]["measured_s"]
            out.append(f"{p} procs: flat / hierarchical (r=1) = {base / hier:.2f}x measured")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per rank per step")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per cell")
    args = parser.parse_args()
    runs = []
    for procs in args.procs:
        print(f"{procs} processes ...", flush=True)
        result = run_ranks(measure, procs, (args.tokens, args.steps), timeout_s=1800,
                           collective_timeout_s=300, threads=1)[0]  # fmt: skip
        runs.append(result)
    errors = [abs(c["error"]) for run in runs for c in run["cells"]]
    summary = {
        "cells": len(errors),
        "within_15_percent": sum(e <= 0.15 for e in errors),
        "median_abs_error": statistics.median(errors),
        "max_abs_error": max(errors),
    }
    print(table(runs))
    print(ratios(runs))
    print(f"planner within 15% of measured: {summary['within_15_percent']}/{len(errors)} cells; "
          f"median |error| {100 * summary['median_abs_error']:.0f}%, "
          f"max {100 * summary['max_abs_error']:.0f}%")  # fmt: skip
    write_json(RESULTS, {"machine": machine_name(torch.device("cpu")), "backend": "gloo",
                         "threads_per_rank": 1, "summary": summary,
                         "cells": [c for run in runs for c in run["cells"]],
                         "runs": runs})  # fmt: skip
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
