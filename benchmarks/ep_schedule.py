"""Scheduled expert parallelism on this machine: measured step times against the planner's.

    PYTHONPATH=src python benchmarks/ep_schedule.py [--procs 2 4] [--tokens 1024]
        [--steps 16] [--repeats 11] [--profiles 4] [--runs 1]

For each process count (gloo over 127.0.0.1, one thread a rank) one launch:

1. profiles the job as ``dynroute profile`` does (``profile_ranks``: collectives per link,
   expert and dense GEMMs forward and backward, per-row tasks; with 4 processes also as
   2 nodes x 2, for the intra- and inter-node links and the whole hierarchical exchange);
2. trains a workload shaped as the planner models a layer — L blocks of a dense MLP
   (4·d² parameters) then an MoE layer (E = 2 experts a rank, SwiGLU, top-2) — one
   forward + backward + gradient sync a step, for every cell: chunks r in {1, 2, 4},
   hierarchical exchange off / on (4 processes: 2 nodes x 2), gradient all-reduce in DDP
   buckets / partitioned into the modelled backward's idle link time. The cells are
   timed interleaved: each round times one step of every cell, in a shuffled order;
3. profiles again between the cells' rounds and after them (``--profiles`` in all), and
   predicts every cell with ``planner.simulate`` on ``Cluster.from_profile`` of each
   profile (the mean of the predictions; flat cells: the flat fits; hierarchical cells:
   the 2-node fits), with the default model for gloo (shared cores: nothing overlaps)
   and, for comparison, ``overlap=True`` (communication beside computation, as on GPUs).

A cell's time is the median over --steps rounds (after 2 warm-up rounds, and 1 after each
profile) of the slowest rank's step. Prints measured and predicted side by side, r = 1
against the planner's chosen r, and with ``--runs N`` (the whole grid N times) a line a
run. Writes benchmarks/results/ep_schedule.json. On 2 CPU cores compute and
communication share the cores, so overlap gains little here: the figure that matters on
this machine is the planner's agreement with measurement.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
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
from dynroute.parallel.planner import Cluster, Layout, Prediction, choose_chunks, simulate
from dynroute.parallel.profile import machine_name, profile_ranks
from dynroute.parallel.spawn import run_ranks

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "ep_schedule.json"
CHUNKS = (1, 2, 4)
WARMUP = 2  # untimed rounds: allocations, gloo connections
#: bytes a rank sends in the profiled collectives: from the split sizes (64 B) to a chunk's
#: rows at r = 1 (2 MB) and the dense gradients (1 MB a layer)
PROFILE_SIZES = (1 << 8, 1 << 12, 1 << 16, 1 << 19, 1 << 21)
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


def time_step(run: nn.Module, x: Tensor) -> tuple[float, float]:
    """(forward, forward + backward + gradient sync) seconds of one step, slowest rank's."""
    run.zero_grad(set_to_none=True)
    dist.barrier()
    start = time.perf_counter()
    loss = run(x)
    forward = time.perf_counter() - start
    loss.backward()
    finish = getattr(run, "finish", None)
    if finish is not None:
        finish()
    took = time.perf_counter() - start
    t = torch.tensor([forward, took], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0]), float(t[1])


def time_rounds(
    runs: list[nn.Module], x: Tensor, rounds: int, warmup: int, first_round: int
) -> list[list[tuple[float, float]]]:
    """(forward, step) seconds of every run in each of ``rounds`` timed rounds, measured
    interleaved: a round times one step of every run, in an order shuffled per round (the
    same on every rank), so a slow spell of this shared machine falls on all cells alike
    instead of on whichever cell it happened to meet. ``warmup`` untimed rounds first."""
    times: list[list[tuple[float, float]]] = [[] for _ in runs]
    order = list(range(len(runs)))
    for round_ in range(warmup + rounds):
        random.Random(first_round + round_).shuffle(order)
        for i in order:
            step = time_step(runs[i], x)
            if round_ >= warmup:
                times[i].append(step)
    return times


def build(ctx: ParallelContext, experts: int) -> nn.Module:
    torch.manual_seed(0)
    return shard_model_experts(Workload(experts), dist.new_group())


def predict(
    profile: Any, shape: Any, procs: int, cell: dict[str, Any], overlap: bool | None = None
) -> Prediction:
    layout = Layout(procs, 1, cell["chunks"], cell["hierarchical"], cell["partitioned"])
    return simulate(shape, cluster_for(profile, cell["hierarchical"], overlap), layout)


def cluster_for(profile: Any, hierarchical: bool, overlap: bool | None = None) -> Cluster:
    """The 2-node fits for a hierarchical cell, the flat ones (one node) otherwise;
    ``overlap``: None, the default model (gloo: shared cores, nothing overlaps); True,
    communication beside computation, kept for comparison."""
    if hierarchical:
        return Cluster.from_profile(profile, overlap=overlap)
    flat = dataclasses.replace(profile, nnodes=1, collectives={"flat": profile.collectives["flat"]})
    return Cluster.from_profile(flat, overlap=overlap)


def measure(
    ctx: ParallelContext, tokens: int, steps: int, repeats: int, profiles: int
) -> dict[str, Any] | None:
    """Every rank: the profile, then every cell measured and predicted (rank 0 returns)."""
    procs = ctx.world_size
    experts = 2 * procs
    nnodes = 2 if procs >= 4 else 1
    local = experts // procs
    rows = tokens * K  # a rank's expert rows at r = 1 (balanced routing); r = 4 has a quarter
    gemm = ((rows // 8, rows // 4, rows // 2, rows), D_MODEL, D_FF, local)
    measured = [profile_ranks(ctx, nnodes, PROFILE_SIZES, repeats, gemm)]
    profile = measured[0]
    base = build(ctx, experts)
    shape, _ = model_shape(base, 1, tokens)  # no attention: seq 1, a batch of tokens
    torch.manual_seed(1 + ctx.rank)
    x = torch.randn(tokens, D_MODEL)
    topo = topology(2) if nnodes > 1 else None
    cells, runs = [], []
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
                    runs.append(wrap_partitioned(model, plan))
                    cell["partitions"] = len(plan)
                else:
                    runs.append(wrap_ddp(model))
                cells.append(cell)
    # this shared machine drifts over the minutes the cells take: profile between the
    # cells' rounds too (same minutes, same machine) and predict from every profile (the
    # mean of the predictions), as the cells' medians span all of them
    timed: list[list[tuple[float, float]]] = [[] for _ in runs]
    parts = profiles - 1
    for part in range(parts):
        rounds = steps // parts + (part < steps % parts)
        warmup = WARMUP if part == 0 else 1  # one round after a profile: its buffers are gone
        found = time_rounds(runs, x, rounds, warmup, 1000 * part)
        timed = [mine + new for mine, new in zip(timed, found, strict=True)]
        measured.append(profile_ranks(ctx, nnodes, PROFILE_SIZES, repeats, gemm))
    medians = [
        (statistics.median(f for f, _ in cell), statistics.median(s for _, s in cell))
        for cell in timed
    ]
    for cell, (forward, step) in zip(cells, medians, strict=True):
        cell["measured_s"], cell["measured_forward_s"] = step, forward
        for key, overlap in (("", None), ("_overlap", True)):
            found = [predict(p, shape, procs, cell, overlap) for p in measured]
            cell[f"predicted{key}_s"] = statistics.mean(p.step_time_s for p in found)
            cell[f"predicted{key}_by_profile_s"] = [p.step_time_s for p in found]
            cell[f"error{key}"] = cell[f"predicted{key}_s"] / step - 1
            if overlap is None:
                cell["predicted_forward_s"] = statistics.mean(
                    p.breakdown["forward_s"] for p in found
                )
    flat = Layout(procs, 1, hierarchical=False, partitioned=False)
    chosen = choose_chunks(shape, cluster_for(profile, False), flat)
    if not ctx.is_main:
        return None
    return {"procs": procs, "tokens_per_rank": tokens, "experts": experts,
            "chosen_chunks": chosen, "profile": profile.to_dict(),
            "later_profiles": [p.to_dict() for p in measured[1:]], "cells": cells}  # fmt: skip


def markdown(header: str, align: str, rows: list[list[str]]) -> str:
    """A markdown table: ``header`` and ``align`` lines as given, one line a row."""
    return "\n".join([header, align, *("| " + " | ".join(row) + " |" for row in rows)])


def table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        for c in run["cells"]:
            sync = f"partitioned ({c['partitions']})" if c["partitioned"] else "DDP buckets"
            rows.append([
                str(c["procs"]), str(c["chunks"]), "on" if c["hierarchical"] else "off", sync,
                f"{1e3 * c['measured_forward_s']:.0f} / {1e3 * c['predicted_forward_s']:.0f}",
                f"{1e3 * c['measured_s']:.1f}", f"{1e3 * c['predicted_s']:.1f}",
                f"{100 * c['error']:+.0f}%", f"{100 * c['error_overlap']:+.0f}%",
            ])  # fmt: skip
    return markdown(
        "| procs | r | hierarchical | gradient sync | forward ms (measured / predicted) "
        "| step ms measured | step ms predicted | error | error, overlap model |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|",
        rows,
    )


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


def agreement(errors: list[float]) -> dict[str, Any]:
    """How many cells are within 15%, the median and the largest |error|."""
    size = [abs(e) for e in errors]
    return {"cells": len(size), "within_15_percent": sum(e <= 0.15 for e in size),
            "median_abs_error": statistics.median(size), "max_abs_error": max(size)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per rank per step")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per cell")
    parser.add_argument("--repeats", type=int, default=11, help="repeats per profiled size")
    parser.add_argument("--profiles", type=int, default=4,
                        help="profiles per launch: one before the cells, the rest spread "
                        "between their rounds (>= 2)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=1,
                        help="run the whole grid this many times (one launch each per "
                        "process count); prints a line a run")  # fmt: skip
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.profiles < 2 or args.steps < args.profiles - 1:
        parser.error("--profiles must be >= 2 and --steps at least --profiles - 1")
    launches, per_run = [], []
    for run in range(1, args.runs + 1):
        runs = []
        for procs in args.procs:
            print(f"run {run} of {args.runs}: {procs} processes ...", flush=True)
            work = (args.tokens, args.steps, args.repeats, args.profiles)
            result = run_ranks(measure, procs, work, timeout_s=1800, collective_timeout_s=300,
                               threads=1)[0]  # fmt: skip
            for cell in result["cells"]:
                cell["run"] = run
            runs.append(result | {"run": run})
        per_run.append({"run": run} | summarise(runs))
        found = per_run[-1]
        print(f"run {run}: " + "; ".join(
            f"{model} model {found[model]['within_15_percent']}/{found[model]['cells']} "
            "within 15%" for model, _ in MODELS))  # fmt: skip
        launches += runs
    print(table(runs))  # the last run's cells
    print(ratios(runs))
    print(run_table(per_run))
    summary = summarise(launches)
    for model, found in summary.items():
        print(f"planner ({model} model) within 15% of measured, all runs: "
              f"{found['within_15_percent']}/{found['cells']} cells; "
              f"median |error| {100 * found['median_abs_error']:.0f}%, "
              f"max {100 * found['max_abs_error']:.0f}%")  # fmt: skip
    write_json(RESULTS, {"machine": machine_name(torch.device("cpu")), "backend": "gloo",
                         "threads_per_rank": 1, "summary": summary, "per_run": per_run,
                         "cells": [c for launch in launches for c in launch["cells"]],
                         "launches": launches})  # fmt: skip
    print(f"wrote {RESULTS}")


MODELS = (("shared_cores", "error"), ("overlap", "error_overlap"))
"""(name, cell key) of the planner's two models: the default for gloo, and overlap."""


def summarise(launches: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`agreement` of every model over the cells of ``launches``."""
    cells = [c for launch in launches for c in launch["cells"]]
    return {model: agreement([c[key] for c in cells]) for model, key in MODELS}


def run_table(per_run: list[dict[str, Any]]) -> str:
    """One row a run: cells within 15%, median and max |error|, for both models."""
    rows = []
    for row in per_run:
        cols = [str(row["run"])]
        for model, _ in MODELS:
            f = row[model]
            cols.append(f"{f['within_15_percent']}/{f['cells']}")
            cols += [f"{100 * f[key]:.0f}%" for key in ("median_abs_error", "max_abs_error")]
        rows.append(cols)
    return markdown(
        "| run | default model (shared cores): cells within 15% | median | max "
        "| overlap model: cells within 15% | median | max |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        rows,
    )


if __name__ == "__main__":
    main()
