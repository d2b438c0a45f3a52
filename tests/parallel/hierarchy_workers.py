"""What every rank runs for the hierarchical-exchange tests (importable by spawned processes)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from dynroute.parallel import ParallelContext
from dynroute.parallel.exchange import FlatExchange
from dynroute.parallel.hierarchy import HierarchicalExchange, stage_bytes, topology
from dynroute.parallel.profile import time_hierarchical_exchange

ROW_SHAPES = {"2d": (3,), "1d": (), "3d": (2, 2)}
TRIALS = 12


def split_matrices(world: int, trials: int = TRIALS, seed: int = 0) -> list[list[list[int]]]:
    """W × W send counts (row s = rank s's in_splits), the same on every rank: random with
    zeros, plus a rank that sends nothing, one that receives nothing, and all zeros."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(trials):
        m = torch.randint(0, 6, (world, world), generator=gen)
        m *= torch.rand(world, world, generator=gen) > 0.3  # many zero blocks
        if t % 4 == 1:
            m[t % world] = 0  # a rank that sends nothing
        if t % 4 == 2:
            m[:, t % world] = 0  # a rank that receives nothing
        out.append(m.tolist())
    out.append([[0] * world for _ in range(world)])
    return out


def rows_to_send(
    rank: int, splits: list[int], shape: tuple[int, ...], dtype: torch.dtype
) -> Tensor:
    """Rows whose values say where they came from: source rank, destination, index."""
    n = sum(splits)
    dest = torch.repeat_interleave(torch.arange(len(splits)), torch.tensor(splits))
    base = (rank * 1000 + dest * 100 + torch.arange(n)).view(n, *[1] * len(shape))
    within = torch.arange(math.prod(shape)).view(shape) * 100_000  # each element differs
    return (base + within).to(dtype)


def compare(ctx: ParallelContext, nnodes: int, group: dist.ProcessGroup | None) -> dict[str, Any]:
    """Hierarchical vs flat on every split matrix and row shape, started two at a time."""
    rank = ctx.rank
    hier, flat = HierarchicalExchange(topology(nnodes, group, timeout_s=30)), FlatExchange(group)
    mismatches, checked, rows = [], 0, 0
    expected = [0, 0]  # (inter, intra) bytes stage_bytes predicts for this rank
    for i, splits in enumerate(split_matrices(ctx.world_size)):
        ins = splits[rank]
        outs = [splits[s][rank] for s in range(ctx.world_size)]
        for name, shape in ROW_SHAPES.items():
            dtype = torch.float32 if name != "3d" else torch.int64
            x = rows_to_send(rank, ins, shape, dtype)
            # two in flight at once, as the pipelined layer does, with the flat one between
            first, second = hier.start(x, outs, ins), hier.start(x * 2, outs, ins)
            want = flat.start(x, outs, ins).wait()
            got, got2 = first.wait(), second.wait()
            again = first.wait()  # a second wait runs nothing and returns the same rows
            if not (torch.equal(got, want) and torch.equal(got2, want * 2) and again is got):
                mismatches.append((i, name))
            checked += 1
            rows += got.shape[0]
            row_bytes = math.prod(shape) * x.element_size()
            b = stage_bytes(splits, nnodes, row_bytes)[rank]
            expected = [expected[0] + 2 * b.inter, expected[1] + 2 * b.intra]  # two starts
    return {
        "mismatches": mismatches,
        "checked": checked,
        "rows": rows,
        "calls": hier.calls,
        "sent": (hier.sent.inter, hier.sent.intra),
        "expected_sent": tuple(expected),
        "node": (hier.topo.node, hier.topo.local),
    }


def errors(ctx: ParallelContext) -> dict[str, str]:
    """Bad nnodes and bad splits fail with a message, before any collective."""
    out = {}
    for nnodes in (0, -1, ctx.world_size + 1, 2.0):
        try:
            topology(nnodes)  # type: ignore[arg-type]
        except ValueError as e:
            out[str(nnodes)] = str(e)
    ex = HierarchicalExchange(topology(1, timeout_s=30))
    try:
        ex.start(torch.zeros(1), [1], [1])
    except ValueError as e:
        out["splits"] = str(e)
    return out


def all_checks(ctx: ParallelContext) -> dict[str, Any]:
    """Every valid nnodes on the world, and on a separate group of all ranks; then errors."""
    sizes = [n for n in range(1, ctx.world_size + 1) if ctx.world_size % n == 0]
    results: dict[str, Any] = {f"world/{n}": compare(ctx, n, None) for n in sizes}
    ep_group = dist.new_group(timeout=None)  # like --expert-parallel: same ranks, own group
    results["group/2"] = compare(ctx, 2, ep_group) if ctx.world_size % 2 == 0 else None
    results["errors"] = errors(ctx)
    nnodes = 2 if ctx.world_size % 2 == 0 else 1
    fit, points = time_hierarchical_exchange(topology(nnodes), (1024, 65536), repeats=2)
    results["timed"] = {"fit": fit.to_dict(), "points": points}
    return results
