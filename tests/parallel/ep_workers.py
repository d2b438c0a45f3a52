"""Functions the parallel tests run on every rank (importable by spawned processes)."""

from __future__ import annotations

import copy
import datetime
import time
from typing import Any

import pipeline_workers
import torch
import torch.distributed as dist

from dynroute.layers import MoE
from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.parallel import (
    ParallelContext,
    TrainingRanks,
    shard_experts,
)
from dynroute.parallel.autoschedule import same_on_every_rank
from dynroute.parallel.profile import task_seconds
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
        "pipeline": pipeline_workers.schedule_checks(ctx),
        "train_lm": train_lm(ctx),
        "bad_setups": bad_setups(ctx),
        "agreement": agreement(ctx),
    }


def agreement(ctx: ParallelContext) -> dict[str, Any]:
    """What every rank must agree on before planning: profiled times and the plan."""
    busy = torch.randn(384, 384)  # ~ms a product, well above a barrier's noise
    # rank 1 works longer: its own times differ from rank 0's
    work = (lambda: busy @ busy @ busy) if ctx.rank else (lambda: busy @ busy)
    return {
        "seconds": task_seconds(work, 3, ctx.device),
        "plan": same_on_every_rank({"chunks": ctx.rank + 1}),
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
    """SGD-momentum steps of DynMoEForCausalLM through TrainingRanks (sharded + DDP), with a
    checkpoint/resume in the middle, vs one process on all ranks' batches."""
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

    def sgd(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.5, momentum=0.9)

    ref_opt = sgd(ref.parameters())
    ref_losses, ref_opt_state = [], None
    for step, xs in enumerate(batches):
        losses = [ref(x, labels=x).loss for x in xs]
        ref_losses.append([v.item() for v in losses])
        (sum(losses) / len(losses)).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad()
        if step == 1:
            ref_opt_state = copy.deepcopy(ref_opt.state_dict())

    ranks = TrainingRanks.from_env(ctx.world_size)
    run = ranks.wrap(model)
    opt = sgd(model.parameters())
    loss_diff, opt_diff = 0.0, 0.0
    for step, xs in enumerate(batches):
        if step == 2:  # checkpoint, then resume into a freshly built (different) model
            saved = (ranks.model_state(model), ranks.optimizer_state(opt, model))
            assert ref_opt_state is not None
            for index, entry in ref_opt_state["state"].items():
                got = saved[1]["state"][index]["momentum_buffer"]
                opt_diff = max(opt_diff, float((got - entry["momentum_buffer"]).abs().max()))
            torch.manual_seed(123)
            model = DynMoEForCausalLM(cfg)
            run = ranks.wrap(model)
            opt = sgd(model.parameters())
            ranks.load_model_state(model, saved[0])
            ranks.load_optimizer_state(opt, model, saved[1])
        loss = run(xs[ctx.rank], labels=xs[ctx.rank]).loss
        loss_diff = max(loss_diff, abs(loss.item() - ref_losses[step][ctx.rank]))
        mean_loss = ranks.mean([loss.item()])[0]
        loss.backward()
        ranks.clip_grad_norm_(model, 1.0)
        opt.step()
        opt.zero_grad()
    state = ranks.model_state(model)
    ref_state = ref.state_dict()
    weight_diff = max(float((v - ref_state[k]).abs().max()) for k, v in state.items())
    moved = max(float((v - init[k]).abs().max()) for k, v in state.items())
    return {
        "loss": loss_diff,
        "mean_loss": abs(mean_loss - sum(ref_losses[-1]) / len(ref_losses[-1])),
        "optimizer": opt_diff,
        "weights": weight_diff,
        "moved": moved,
        "keys": sorted(state),
        "ranks": ranks.gather(ctx.rank),
    }


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
