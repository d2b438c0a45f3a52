"""``--ep-schedule auto``: profile the job once, then let the cost model pick the schedule.

At start-up every rank of an expert-parallel job (after ``shard_model_experts``) measures
its collectives, expert GEMMs and per-row tasks (:func:`~dynroute.parallel.profile.
profile_ranks`, about a second on small sizes), describes the model to the planner
(:class:`~dynroute.parallel.planner.ModelShape`), and then

- sets each layer's token chunks r to the planner's choice (:func:`~dynroute.parallel.
  planner.choose_chunks`; :func:`~dynroute.parallel.moe.set_ep_schedule`),
- exchanges hierarchically when the job spans several nodes (torchrun's
  ``LOCAL_WORLD_SIZE`` ranks a node; :class:`~dynroute.parallel.hierarchy.
  HierarchicalExchange`), flat otherwise,
- wraps the model for the dense gradients' all-reduce in partitions fitted to the idle
  link time of the modelled MoE backward (:func:`~dynroute.parallel.partition.
  plan_partitions`, :class:`~dynroute.parallel.partition.PartitionedDataParallel`).

Every choice changes only when and in which pieces data moves: losses and gradients
equal those of ``--ep-schedule off`` (tests in ``tests/parallel``).

The planner needs k̄ per layer before any batch is seen: it takes the router's nominal
value (top-k's ``k``, a dynamic router's ``target`` if it has one, else min(2, E)).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist
from torch import nn

from dynroute.parallel.comm import Group
from dynroute.parallel.costmodel import Profile
from dynroute.parallel.exchange import Exchange, FlatExchange
from dynroute.parallel.hierarchy import HierarchicalExchange, topology
from dynroute.parallel.moe import ExpertParallelMoE, set_ep_schedule
from dynroute.parallel.partition import (
    dense_parameters,
    parameter_bytes,
    plan_partitions,
    wrap_partitioned,
)
from dynroute.parallel.planner import Cluster, Layout, ModelShape, backward_block, choose_chunks
from dynroute.parallel.profile import profile_ranks
from dynroute.parallel.runtime import context_of

#: collective sizes (bytes) profiled at start-up: small, so it takes about a second
STARTUP_SIZES = (1 << 12, 1 << 15, 1 << 18)


@dataclass
class EPSchedule:
    """What ``--ep-schedule auto`` chose, and the module to train with.

    Attributes:
        wrapped: the model wrapped for the partitioned gradient all-reduce.
        chunks: token chunks r per expert-parallel layer (by module name).
        exchange: ``"flat"`` or ``"hierarchical"``.
        partitions: how many pieces the dense gradients' all-reduce goes out in.
        nnodes: nodes the job spans.
        profile: the start-up measurement the choices came from.
    """

    wrapped: nn.Module
    chunks: dict[str, int]
    exchange: str
    partitions: int
    nnodes: int
    profile: Profile = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """A JSON-able description (logged by the training engine)."""
        return {
            "chunks": dict(self.chunks),
            "exchange": self.exchange,
            "partitions": self.partitions,
            "nnodes": self.nnodes,
        }


def nodes_of_job(world: int) -> int:
    """Nodes the job spans: ``WORLD_SIZE / LOCAL_WORLD_SIZE`` under torchrun, else 1.

    Example:
        >>> nodes_of_job(4)  # no LOCAL_WORLD_SIZE in this environment: one node
        1
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
    return world // local if local and world % local == 0 else 1


def nominal_k(layer: ExpertParallelMoE) -> float:
    """The k̄ the planner assumes for ``layer`` before any batch has been routed."""
    for name in ("k", "target"):
        value = getattr(layer.route, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(min(value, layer.num_experts))
    return float(min(2, layer.num_experts))


def model_shape(model: nn.Module, seq_len: int, batch: int) -> tuple[ModelShape, list[str]]:
    """The planner's view of ``model`` (its expert-parallel layers, in order) and their names.

    ``batch`` rows of ``seq_len`` tokens a rank per micro-batch (the planner's attention
    term grows with ``seq_len``: a model without attention is ``seq_len=1``). d_ff is the
    SwiGLU width with the experts' parameter count (3·d_model·d_ff per expert); dense
    parameters are spread evenly over the layers.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, ExpertParallelMoE)]
    if not layers:
        raise ValueError("--ep-schedule auto: the model has no expert-parallel MoE layer")
    _, first = layers[0]
    d_model = first.gate.weight.shape[1]
    per_expert = sum(p.numel() for p in first.experts.parameters()) // first.num_local_experts
    dense = sum(p.numel() for _, p in dense_parameters(model))
    shape = ModelShape(
        layers=len(layers),
        d_model=d_model,
        d_ff=max(1, per_expert // (3 * d_model)),
        experts=first.num_experts,
        k_per_layer=tuple(nominal_k(m) for _, m in layers),
        seq=seq_len,
        batch=batch,
        dense_params_per_layer=max(1, dense // len(layers)),
        element_bytes=first.gate.weight.element_size(),
    )
    return shape, [n for n, _ in layers]


def idle_link_gaps(shape: ModelShape, cluster: Cluster, layout: Layout) -> list[float]:
    """Seconds per layer (backward order) the link idles in the modelled MoE backward."""
    gaps = []
    for layer in reversed(range(shape.layers)):
        block = backward_block(shape, cluster, layout, shape.layer_k(layer), allreduce=False)
        comm = block.busy("dispatch") + block.busy("combine")
        gaps.append(max(0.0, block.makespan - comm))
    return gaps


def same_on_every_rank(plan: Any, group: Group = None) -> Any:
    """The first rank's ``plan`` (any picklable value), on every rank of ``group``.

    The profile is the same on every rank, but a plan that differed by one chunk would
    mismatch the ranks' collectives and hang or crash the job: rank 0 decides.
    """
    box = [plan]
    source = 0 if group is None else dist.get_global_rank(group, 0)
    dist.broadcast_object_list(box, src=source, group=group)
    return box[0]


def schedule_expert_parallel(
    model: nn.Module, group: Group = None, seq_len: int = 1024, batch: int = 2
) -> EPSchedule:
    """Profile, plan and apply ``--ep-schedule auto`` to a model after ``shard_model_experts``.

    Every rank of the job must call it (the profile and the wrapper run collectives).

    Args:
        model: the sharded model (built identically on every rank).
        group: the expert-parallel group the layers were sharded over.
        seq_len, batch: each rank's micro-batch, ``batch`` rows of ``seq_len`` tokens.
    """
    ctx = context_of(dist.get_backend(group), group)
    nnodes = nodes_of_job(ctx.world_size)
    shape, names = model_shape(model, seq_len, batch)
    gemm_rows = (64, 256, max(256, shape.tokens))
    local = max(1, shape.experts // ctx.world_size)
    profile = profile_ranks(
        ctx, nnodes, STARTUP_SIZES, 3, (gemm_rows, shape.d_model, shape.d_ff, local)
    )
    cluster = Cluster.from_profile(profile)
    layout = Layout(ctx.world_size, 1, hierarchical=nnodes > 1, partitioned=True)
    chunks = dict(zip(names, choose_chunks(shape, cluster, layout), strict=True))
    chunks = same_on_every_rank(chunks, group)
    exchange: Exchange = (
        HierarchicalExchange(topology(nnodes, group)) if nnodes > 1 else FlatExchange(group)
    )
    set_ep_schedule(model, chunks, exchange)
    sizes = parameter_bytes([p for _, p in dense_parameters(model)])
    fit = profile.collectives["flat"]["all_reduce"]
    partitions = plan_partitions(sizes, idle_link_gaps(shape, cluster, layout), fit.time)
    partitions = same_on_every_rank(partitions, group)
    wrapped = wrap_partitioned(model, partitions)
    return EPSchedule(wrapped, chunks, exchange.name, len(partitions), nnodes, profile)
