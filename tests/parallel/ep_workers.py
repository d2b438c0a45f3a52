"""Functions the parallel tests run on every rank (importable by spawned processes)."""

from __future__ import annotations

import copy
import datetime
import time
from typing import Any

import torch
import torch.distributed as dist

from dynroute.layers import MoE
from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.parallel import (
    ParallelContext,
    clip_grad_norm_,
    full_state_dict,
    shard_experts,
    shard_model_experts,
    wrap_ddp,
)
from dynroute.parallel.selftest import CASES, compare_ddp, compare_with_single_process

TOKEN_SPLITS = {
    "uneven": (9, 5),
    "tiny_rank": (9, 1),  # rank 1 has one token: most experts get nothing from it
    "empty_rank": (9, 0),  # rank 1 has no tokens at all
}


def all_checks(ctx: ParallelContext) -> dict[str, Any]:
    """Everything in one launch (a process start costs seconds): equivalence, then bad setups."""
    return {
        "equivalence": equivalence(ctx),
        "train_lm": train_lm(ctx),
        "bad_setups": bad_setups(ctx),
    }


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


def train_lm(ctx: ParallelContext, steps: int = 3) -> dict[str, Any]:
    """A few SGD steps of DynMoEForCausalLM, sharded + DDP, vs one process on all batches."""
    cfg = DynMoEConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=32, num_experts=4,
        router="top_p", p=0.4, max_seq_len=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DynMoEForCausalLM(cfg)
    ref = copy.deepcopy(model)
    init = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(7)
    batches = [
        [torch.randint(0, 64, (2, 8), generator=gen) for _ in range(ctx.world_size)]
        for _ in range(steps)
    ]
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    ref_losses = []
    for xs in batches:
        losses = [ref(x, labels=x).loss for x in xs]
        ref_losses.append([v.item() for v in losses])
        (sum(losses) / len(losses)).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad()

    shard_model_experts(model)
    ddp = wrap_ddp(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_diff = 0.0
    for step, xs in enumerate(batches):
        loss = ddp(xs[ctx.rank], labels=xs[ctx.rank]).loss
        loss_diff = max(loss_diff, abs(float(loss) - ref_losses[step][ctx.rank]))
        loss.backward()
        clip_grad_norm_(model, 1.0)
        opt.step()
        opt.zero_grad()
    state = full_state_dict(model)
    ref_state = ref.state_dict()
    weight_diff = max(float((v - ref_state[k]).abs().max()) for k, v in state.items())
    moved = max(float((v - init[k]).abs().max()) for k, v in state.items())
    return {"loss": loss_diff, "weights": weight_diff, "moved": moved, "keys": sorted(state)}


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
    short = dist.new_group(timeout=datetime.timedelta(seconds=1))
    ep = shard_experts(MoE(8, 16, 4), group=short)
    start = time.monotonic()
    if ctx.rank == 0:
        out["missing_rank"] = _error(lambda: ep(torch.randn(5, 8)))
    out["seconds"] = time.monotonic() - start
    dist.barrier()  # on the world group, which is still healthy
    return out
