"""Check expert parallelism against the single-process MoE on every rank of a real job.

Run it wherever the job will run (CPU/gloo here, GPUs/NCCL on a cluster)::

    python -m torch.distributed.run --nproc-per-node 2 -m dynroute.parallel.selftest
    torchrun --nnodes 2 --nproc-per-node 8 ... -m dynroute.parallel.selftest

Each rank builds the same MoE (same seed), draws every rank's tokens from one
seeded generator, computes the single-process reference itself, runs the
expert-parallel layer on its own tokens, and reports the largest differences of
outputs, aux losses and gradients. Exit status 1 when any exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from dynroute.layers import MoE
from dynroute.parallel.ddp import (
    clip_grad_norm_,
    full_state_dict,
    load_full_state_dict,
    wrap_ddp,
)
from dynroute.parallel.moe import shard_experts, shard_model_experts
from dynroute.parallel.runtime import ParallelContext, init_from_env
from dynroute.routing import Routing, top_k

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "top_k": ("top_k", {"k": 2}),
    "top_p": ("top_p", {"p": 0.4}),
    "null_experts": ("null_experts", {"k": 2, "num_null": 2}),
    "expert_choice": ("expert_choice", {"capacity_factor": 1.0}),
    "skewed": ("skewed", {}),
}
"""Router settings checked; "skewed" sends every token to rank 0's experts (top-1)."""


def skewed_top1(logits: Tensor, allowed: int) -> Routing:
    """Top-1 over the first ``allowed`` experts only: the other ranks receive no rows.

    Example:
        >>> logits = torch.tensor([[0.0, 1.0, 5.0, 9.0]]).expand(3, 4)
        >>> skewed_top1(logits, allowed=2).expert_counts().tolist()
        [0, 3, 0, 0]
    """
    mask = torch.full_like(logits, -1e4)  # finite: the router rejects inf logits
    mask[:, :allowed] = 0.0
    return top_k(logits + mask, 1)


def build_moe(case: str, d_model: int, d_ff: int, num_experts: int, world: int, seed: int) -> MoE:
    """The layer of a case, identical on every rank (seeded)."""
    torch.manual_seed(seed)
    router, kwargs = CASES[case]
    if router == "skewed":
        return MoE(
            d_model,
            d_ff,
            num_experts,
            router=functools.partial(skewed_top1, allowed=num_experts // world),
        )
    return MoE(d_model, d_ff, num_experts, router=router, **kwargs)


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def compare_with_single_process(
    ctx: ParallelContext,
    case: str,
    tokens: Sequence[int],
    d_model: int = 16,
    d_ff: int = 24,
    num_experts: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Largest differences between the expert-parallel layer and ``MoE`` on this rank.

    The reference is one process running ``MoE`` on every rank's tokens, with the
    loss Σ_r [ (c_r · y_r).sum() + aux_r.loss ] (c_r fixed random weights). Router
    gradients of the expert-parallel layer are summed over ranks (all_reduce)
    before the comparison; expert gradients are compared shard by shard.

    Args:
        ctx: this rank; case: a key of ``CASES``; tokens: tokens per rank (len = W).

    Returns:
        dict with ``output``, ``aux``, ``x_grad``, ``gate_grad``, ``expert_grad``
        (max abs differences), ``concat_output`` (vs ``MoE`` on all ranks' tokens at
        once; None for expert choice, whose routing depends on the batch),
        ``received`` (rows per local expert) and ``mean_experts``.
    """
    world, rank, group = dist.get_world_size(ctx.group), dist.get_rank(ctx.group), ctx.group
    if len(tokens) != world:
        raise ValueError(f"compare_with_single_process: need {world} token counts, got {tokens}")
    device = ctx.device
    moe = build_moe(case, d_model, d_ff, num_experts, world, seed).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(n, d_model, generator=gen).to(device) for n in tokens]
    cs = [torch.randn(n, d_model, generator=gen).to(device) for n in tokens]

    ref = copy.deepcopy(moe)
    ref_x = [x.clone().requires_grad_(True) for x in xs]
    ref_out, ref_aux, ref_loss = [], [], 0.0
    for x, c in zip(ref_x, cs, strict=True):
        y, aux = ref(x)
        ref_out.append(y.detach())
        ref_aux.append(aux.loss.detach())
        ref_loss = ref_loss + (c * y).sum() + aux.loss
    ref_loss.backward()  # type: ignore[union-attr]

    ep = shard_experts(moe, group)
    x = xs[rank].clone().requires_grad_(True)
    y, aux = ep(x)
    ((cs[rank] * y).sum() + aux.loss).backward()
    gate_grad = ep.gate.weight.grad.clone()  # type: ignore[union-attr]
    dist.all_reduce(gate_grad, group=group)
    lo, hi = ep.expert_offset, ep.expert_offset + ep.num_local_experts
    assert ref.experts.gate_up.grad is not None and ref.experts.down.grad is not None
    expert_grad = max(
        _max_diff(ep.experts.gate_up.grad, ref.experts.gate_up.grad[lo:hi]),  # type: ignore[arg-type]
        _max_diff(ep.experts.down.grad, ref.experts.down.grad[lo:hi]),  # type: ignore[arg-type]
    )
    concat = None
    if case != "expert_choice":
        with torch.no_grad():
            full, _ = copy.deepcopy(ref)(torch.cat(xs))
        start = sum(tokens[:rank])
        concat = _max_diff(y.detach(), full[start : start + tokens[rank]])
    # Which rows this rank's experts received from everyone (for the zero-token cases).
    all_counts = [torch.empty_like(aux.routing.expert_counts()) for _ in range(world)]
    dist.all_gather(all_counts, aux.routing.expert_counts(), group=group)
    received = torch.stack(all_counts).sum(0)[lo:hi].tolist()
    return {
        "case": case,
        "rank": rank,
        "tokens": tokens[rank],
        "output": _max_diff(y.detach(), ref_out[rank]),
        "aux": _max_diff(aux.loss.detach(), ref_aux[rank]),
        "x_grad": _max_diff(x.grad, ref_x[rank].grad),  # type: ignore[arg-type]
        "gate_grad": _max_diff(gate_grad, ref.gate.weight.grad),  # type: ignore[arg-type]
        "expert_grad": expert_grad,
        "expert_grad_norm": float(ep.experts.gate_up.grad.norm()),  # type: ignore[union-attr]
        "concat_output": concat,
        "received": received,
        "mean_experts": aux.mean_experts,
    }


class _TinyNet(torch.nn.Module):
    """Linear -> MoE -> Linear, to check DDP on the replicated parameters."""

    def __init__(self, d: int, num_experts: int) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(d, d)
        self.moe = MoE(d, 2 * d, num_experts, router="top_p", p=0.5)
        self.out = torch.nn.Linear(d, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, aux = self.moe(torch.tanh(self.inp(x)))
        return self.out(h).mean() + aux.loss, aux.loss


def compare_ddp(ctx: ParallelContext, tokens: int = 6, d: int = 16, num_experts: int = 4) -> dict:
    """DDP over the replicated parameters + expert-parallel MoE vs one process.

    Reference: the mean over ranks of each rank's loss, on one process. With
    ``wrap_ddp`` (averaged expert gradients) every gradient must match it.
    Also checks that DDP's start-up broadcast left each rank's expert shard alone
    and that ``full_state_dict`` / ``load_full_state_dict`` round-trip.

    Returns:
        dict of max abs differences: ``grads`` (all parameters), ``norm`` and
        ``clipped_grads`` (``clip_grad_norm_`` vs torch's on one process), ``state`` (gathered
        state dict vs the full model), ``shard_kept`` (expert shard before/after DDP).
    """
    world, rank = ctx.world_size, ctx.rank
    torch.manual_seed(0)
    net = _TinyNet(d, num_experts)
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(tokens, d, generator=gen) for _ in range(world)]
    ref = copy.deepcopy(net)
    (sum(ref(x)[0] for x in xs) / world).backward()

    model = shard_model_experts(net)
    before = model.moe.experts.gate_up.detach().clone()
    ddp = wrap_ddp(model)
    shard_kept = _max_diff(model.moe.experts.gate_up.detach(), before)
    loss, _ = ddp(xs[rank])
    loss.backward()
    lo, hi = model.moe.expert_offset, model.moe.expert_offset + model.moe.num_local_experts
    ref_grads = dict(ref.named_parameters())

    def grad_diff() -> float:  # this rank's gradients vs the reference's (its expert shard)
        worst = 0.0
        for name, p in model.named_parameters():
            want = ref_grads[name].grad
            assert want is not None and p.grad is not None, name
            want = want[lo:hi] if name.startswith("moe.experts.") else want
            worst = max(worst, _max_diff(p.grad, want))
        return worst

    worst = grad_diff()
    # Global gradient norm and clipping, as one process would compute them.
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    norm = clip_grad_norm_(ddp, 0.05)
    clipped = grad_diff()
    state = full_state_dict(ddp)
    state_diff = max(_max_diff(v, ref.state_dict()[k]) for k, v in state.items())
    load_full_state_dict(ddp, ref.state_dict())
    return {
        "grads": worst,
        "norm": abs(float(norm) - float(ref_norm)),
        "clipped_grads": clipped,
        "clip_active": float(ref_norm) > 0.05,
        "state": state_diff,
        "shard_kept": shard_kept,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point under torchrun: run every case, print a table on rank 0, return 0/1."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=12, help="tokens on rank 0 (rank r: fewer)")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args(argv)
    ctx = init_from_env()
    world = ctx.world_size
    # Uneven batches, the last rank may have very few tokens: exercises empty experts.
    tokens = [max(1, args.tokens - 5 * r) for r in range(world)]
    worst = 0.0
    keys = ("output", "aux", "x_grad", "gate_grad", "expert_grad")
    for case in CASES:
        res = compare_with_single_process(ctx, case, tokens, num_experts=args.experts)
        diffs = torch.tensor([res[k] for k in keys], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
        worst = max(worst, float(diffs.max()))
        if ctx.is_main:
            print(
                f"{case:>14}: "
                + "  ".join(f"{k}={v:.1e}" for k, v in zip(keys, diffs.tolist(), strict=True))
            )
    ok = worst <= args.tol
    if ctx.is_main:
        print(
            f"selftest {'passed' if ok else 'FAILED'}: world={world} backend={ctx.backend} "
            f"max difference {worst:.2e} (tolerance {args.tol:.0e})"
        )
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
