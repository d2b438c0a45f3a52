"""What the pipelined-schedule tests run on every rank (importable by spawned processes)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from dynroute.parallel import (
    TASKS,
    Exchange,
    FlatExchange,
    HierarchicalExchange,
    ParallelContext,
    Topology,
    measure_tasks,
    set_ep_schedule,
    shard_experts,
    topology,
)
from dynroute.parallel.exchange import PendingExchange, Ready
from dynroute.parallel.selftest import CASES, build_moe

D_MODEL, D_FF = 16, 24

TOKEN_SPLITS: dict[int, dict[str, tuple[int, ...]]] = {
    2: {"uneven": (9, 5), "empty_rank": (9, 0), "fewer_than_chunks": (3, 2)},
    4: {"uneven": (9, 5, 7, 2), "empty_rank": (6, 0, 4, 3), "fewer_than_chunks": (3, 1, 2, 0)},
}
"""Tokens per rank for each world size: uneven, a rank with none, fewer tokens than r = 4."""


class BlockingExchange:
    """An Exchange that finishes inside ``start`` (no overlap at all): the pipelined layer
    must work with any object that keeps the protocol, not only the flat one."""

    name = "blocking"

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.flat, self.group = FlatExchange(group), group

    def start(
        self, x: Tensor, out_splits: Sequence[int], in_splits: Sequence[int]
    ) -> PendingExchange:
        return Ready(self.flat.start(x, out_splits, in_splits).wait())


SCHEDULES = {
    "r1": (1, "flat"),
    "r2": (2, "flat"),
    "r4": (4, "flat"),
    "r1_blocking": (1, "blocking"),
    "r3_blocking": (3, "blocking"),
    "r1_hierarchical": (1, "hierarchical"),  # 2 nodes: 2x1 on 2 ranks, 2x2 on 4
    "r2_hierarchical": (2, "hierarchical"),
}
"""Schedules compared: chunks and exchange. r1 (flat) is today's unpipelined path."""


def schedule_checks(ctx: ParallelContext) -> dict[str, Any]:
    """Everything in one launch (a process start costs seconds)."""
    out: dict[str, Any] = {}
    experts = 2 * ctx.world_size
    for case in CASES:
        for split, tokens in TOKEN_SPLITS[ctx.world_size].items():
            out[f"{case}/{split}"] = compare_schedules(ctx, case, tokens, experts)
    out["timing"] = task_times(ctx, experts)
    return out


_TOPOLOGY: list[Topology] = []  # built once per process: new_group is collective


def make_exchange(ctx: ParallelContext, kind: str) -> Exchange:
    """The exchange a schedule names, over this job's group."""
    if kind == "flat":
        return FlatExchange(ctx.group)
    if kind == "blocking":
        return BlockingExchange(ctx.group)
    if not _TOPOLOGY:
        _TOPOLOGY.append(topology(2, ctx.group))
    return HierarchicalExchange(_TOPOLOGY[0])


def _run(ctx: ParallelContext, moe: torch.nn.Module, x: Tensor, c: Tensor, schedule: str) -> dict:
    """One schedule's output and gradients on this rank (router gradient summed over ranks)."""
    chunks, kind = SCHEDULES[schedule]
    ep = shard_experts(copy.deepcopy(moe), ctx.group)
    exchange = make_exchange(ctx, kind)
    set_ep_schedule(ep, chunks, exchange)
    x = x.clone().requires_grad_(True)
    y, aux = ep(x)
    ((c * y).sum() + aux.loss).backward()
    gate_grad = ep.gate.weight.grad.clone()  # type: ignore[union-attr]
    dist.all_reduce(gate_grad, group=ctx.group)
    grads = {n: p.grad for n, p in ep.experts.named_parameters()}
    return {"output": y.detach(), "x_grad": x.grad, "gate_grad": gate_grad, "experts": grads}


def _diff(a: Tensor | None, b: Tensor | None) -> float:
    assert a is not None and b is not None
    return float((a - b).abs().max()) if a.numel() else 0.0


def _diffs(got: dict, want: dict) -> dict[str, float]:
    experts = max(
        (_diff(g, want["experts"][n]) for n, g in got["experts"].items()), default=0.0
    )  # fmt: skip
    keys = ("output", "x_grad", "gate_grad")
    return {**{k: _diff(got[k], want[k]) for k in keys}, "expert_grad": experts}


def compare_schedules(
    ctx: ParallelContext, case: str, tokens: Sequence[int], num_experts: int, seed: int = 0
) -> dict[str, Any]:
    """Every schedule of ``SCHEDULES`` vs the single-process MoE and vs the unpipelined r1.

    The reference is one process running ``MoE`` on every rank's tokens, with the loss
    Σ_r [ (c_r · y_r).sum() + aux_r.loss ]; expert gradients are compared shard by shard.

    Returns:
        {"single/<schedule>": diffs, "r1/<schedule>": diffs, "tokens": n, "received": rows
        this rank's experts got} with diffs = max abs differences of output, x_grad,
        gate_grad, expert_grad.
    """
    world, rank = ctx.world_size, ctx.rank
    moe = build_moe(case, D_MODEL, D_FF, num_experts, world, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(n, D_MODEL, generator=gen) for n in tokens]
    cs = [torch.randn(n, D_MODEL, generator=gen) for n in tokens]
    ref = copy.deepcopy(moe)
    ref_x = [x.clone().requires_grad_(True) for x in xs]
    outs, loss = [], torch.zeros(())
    for x, c in zip(ref_x, cs, strict=True):
        y, aux = ref(x)
        outs.append(y.detach())
        loss = loss + (c * y).sum() + aux.loss
    loss.backward()
    local = num_experts // world
    lo, hi = rank * local, (rank + 1) * local
    want = {
        "output": outs[rank],
        "x_grad": ref_x[rank].grad,
        "gate_grad": ref.gate.weight.grad,
        "experts": {n: p.grad[lo:hi] for n, p in ref.experts.named_parameters()},  # type: ignore[index]
    }
    runs = {name: _run(ctx, moe, xs[rank], cs[rank], name) for name in SCHEDULES}
    out: dict[str, Any] = {"tokens": tokens[rank]}
    for name, got in runs.items():
        out[f"single/{name}"] = _diffs(got, want)
        out[f"r1/{name}"] = _diffs(got, runs["r1"])
    with torch.no_grad():
        counts = ref(xs[rank])[1].routing.expert_counts()
    dist.all_reduce(counts, group=ctx.group)
    out["received"] = int(counts[lo:hi].sum())
    return out


def task_times(ctx: ParallelContext, num_experts: int) -> dict[str, Any]:
    """The recorded task times of a two-layer model, r = 1 and r = 2 (one call per layer)."""
    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        *(build_moe("top_p", D_MODEL, D_FF, num_experts, 1, s) for s in (0, 1))
    )
    x = torch.randn(8, D_MODEL)
    out: dict[str, Any] = {}
    for chunks in (1, 2):
        eps = [shard_experts(layer, ctx.group) for layer in layers]
        for ep in eps:
            set_ep_schedule(ep, chunks)
        with measure_tasks() as times:
            h = x
            for ep in eps:
                h = ep(h)[0]
        out[f"r{chunks}"] = times.calls
    out["tasks"] = list(TASKS)
    return out
