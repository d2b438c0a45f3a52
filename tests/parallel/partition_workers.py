"""What the gradient-partitioning test runs on every rank (importable by spawned processes)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dynroute.layers import MoE
from dynroute.parallel import ParallelContext, shard_model_experts, wrap_ddp
from dynroute.parallel.partition import (
    PartitionedDataParallel,
    dense_parameters,
    parameter_bytes,
    plan_partitions,
    wrap_partitioned,
)

# Each step: its micro-batches (no_sync on all but the last), each naming the ranks whose
# loss uses the spare layer. Step 1 leaves it unused everywhere (its grad stays None);
# steps 0 and 2 leave it unused on one rank (that rank gets the others' average).
SCHEDULE: list[list[set[int]]] = [[{0}], [set(), set()], [{1}, set()], [{0, 1}]]
VOCAB = 64
PARTITIONINGS = ("one_per_param", "all_in_one", "reversed", "planned", "fallback")


class TinyMoELM(nn.Module):
    """A two-MoE-layer language model (no transformers import: ranks start faster), plus
    a spare layer that joins the loss only when asked to."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(2))
        self.moes = nn.ModuleList(MoE(d, 32, 4, router="top_p", p=0.4) for _ in range(2))
        self.head = nn.Linear(d, VOCAB)
        self.spare = nn.Linear(4, 2)

    def forward(self, ids: Tensor, use_spare: bool) -> Tensor:
        h = self.embed(ids)
        aux_loss = h.new_zeros(())
        for norm, moe in zip(self.norms, self.moes, strict=True):
            y, aux = moe(norm(h))
            h, aux_loss = h + y, aux_loss + aux.loss
        loss = nn.functional.cross_entropy(self.head(h).flatten(0, 1), ids.flatten()) + aux_loss
        if use_spare:
            loss = loss + self.spare(torch.ones(4)).pow(2).sum()
        return loss


def _model(experts: dist.ProcessGroup) -> nn.Module:
    torch.manual_seed(0)
    return shard_model_experts(TinyMoELM(), experts)


def _train(
    ctx: ParallelContext, wrap: Callable[[nn.Module], nn.Module], experts: dist.ProcessGroup
) -> dict[str, Any]:
    """SCHEDULE with SGD-momentum: every step's gradients, the final weights, the timeline."""
    model = _model(experts)
    run = wrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    grads = []
    for micro in SCHEDULE:
        for m, users in enumerate(micro):
            ids = [torch.randint(0, VOCAB, (2, 8), generator=gen) for _ in range(ctx.world_size)]
            last = m == len(micro) - 1
            local = getattr(run, "no_sync", contextlib.nullcontext)  # the control has none
            with contextlib.nullcontext() if last else local():
                (run(ids[ctx.rank], ctx.rank in users) / len(micro)).backward()
        if isinstance(run, PartitionedDataParallel):
            run.finish()  # already done at the end of the backward: a no-op
        named = model.named_parameters()
        grads.append({n: None if p.grad is None else p.grad.clone() for n, p in named})
        opt.step()
        opt.zero_grad()
    return {
        "grads": grads,
        "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
        "timeline": getattr(run, "timeline", None),
    }


def _difference(got: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Largest gradient / weight difference, and the names whose grad is None in one only."""
    grad_diff, mismatched = 0.0, []
    for step, (a, b) in enumerate(zip(got["grads"], ref["grads"], strict=True)):
        for name, g in a.items():
            if (g is None) != (b[name] is None):
                mismatched.append(f"step {step}: {name}")
            elif g is not None:
                grad_diff = max(grad_diff, float((g - b[name]).abs().max()))
    weights = got["weights"]
    weight_diff = max(float((w - ref["weights"][n]).abs().max()) for n, w in weights.items())
    return {"grads": grad_diff, "weights": weight_diff, "none_mismatch": mismatched}


def partitionings(model: nn.Module) -> dict[str, Any]:
    """The partitionings checked against DDP (index lists, or None for the byte fallback)."""
    sizes = parameter_bytes([p for _, p in dense_parameters(model)])
    n = len(sizes)
    plans = {
        "one_per_param": [[i] for i in range(n)],
        "all_in_one": [list(range(n))],
        "reversed": [[i] for i in reversed(range(n))],  # the first to issue is ready last
        "planned": plan_partitions(sizes, gaps_s=[1.5, 3.0, 1.6], fit=(1.0, 1 / 1024)),
        "fallback": None,
    }
    assert tuple(plans) == PARTITIONINGS
    return plans


def compare_with_ddp(ctx: ParallelContext) -> dict[str, Any]:
    """Each partitioning vs wrap_ddp (find_unused_parameters): gradients of every step
    (accumulation, unused parameters included) and the weights after SGD; and, as a
    control, the same loop with no gradient reduction at all."""
    experts = dist.new_group()
    ref = _train(ctx, lambda m: wrap_ddp(m, find_unused_parameters=True), experts)
    plans = partitionings(_model(experts))
    out: dict[str, Any] = {"planned_sizes": [len(p.params) for p in plans["planned"]]}
    for name, plan in plans.items():
        got = _train(
            ctx, lambda m, plan=plan: wrap_partitioned(m, plan, bucket_bytes=2048), experts
        )
        out[name] = {**_difference(got, ref), "timeline": got["timeline"]}
    out["no_reduction"] = _difference(_train(ctx, lambda m: m, experts), ref)
    out["ddp_spare_grad_is_none"] = [step["spare.weight"] is None for step in ref["grads"]]
    init = _model(experts).state_dict()
    out["moved"] = max(float((w - init[n]).abs().max()) for n, w in ref["weights"].items())
    return out
