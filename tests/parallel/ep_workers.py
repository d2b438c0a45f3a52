"""Functions the parallel tests run on every rank (importable by spawned processes)."""

from __future__ import annotations

import datetime
import time
from typing import Any

import torch
import torch.distributed as dist

from dynroute.layers import MoE
from dynroute.parallel import ParallelContext, shard_experts
from dynroute.parallel.selftest import CASES, compare_ddp, compare_with_single_process

TOKEN_SPLITS = {
    "uneven": (9, 5),
    "tiny_rank": (9, 1),  # rank 1 has one token: most experts get nothing from it
    "empty_rank": (9, 0),  # rank 1 has no tokens at all
}


def all_checks(ctx: ParallelContext) -> dict[str, Any]:
    """Everything in one launch (a process start costs seconds): equivalence, then bad setups."""
    return {"equivalence": equivalence(ctx), "bad_setups": bad_setups(ctx)}


def equivalence(ctx: ParallelContext) -> dict[str, Any]:
    """Every router x token split vs the single-process MoE, then DDP."""
    out: dict[str, Any] = {}
    for case in CASES:
        for split, tokens in TOKEN_SPLITS.items():
            experts = 8 if split == "tiny_rank" else 4
            out[f"{case}/{split}"] = compare_with_single_process(
                ctx, case, tokens, num_experts=experts
            )
    out["ddp"] = compare_ddp(ctx)
    return out


def _error(fn: Any) -> str:
    try:
        fn()
    except Exception as e:  # the test asserts on the type and message
        return f"{type(e).__name__}: {e}"
    return "no error"


def bad_setups(ctx: ParallelContext) -> dict[str, Any]:
    """Each rank reports the error it got for each misconfiguration (run this last: the
    timed-out group stays broken)."""
    out: dict[str, Any] = {}
    out["indivisible"] = _error(lambda: shard_experts(MoE(8, 16, 3)))
    torch.manual_seed(ctx.rank)  # a different model on each rank
    out["different_weights"] = _error(lambda: shard_experts(MoE(8, 16, 4)))
    # A rank that skips the forward pass: the other must fail at the timeout, not hang.
    torch.manual_seed(0)
    short = dist.new_group(timeout=datetime.timedelta(seconds=2))
    ep = shard_experts(MoE(8, 16, 4), group=short)
    start = time.monotonic()
    if ctx.rank == 0:
        out["missing_rank"] = _error(lambda: ep(torch.randn(5, 8)))
    out["seconds"] = time.monotonic() - start
    dist.barrier()  # on the world group, which is still healthy
    return out
