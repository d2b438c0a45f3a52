"""Online profile of the expert-parallel tasks: collectives, expert GEMMs, per-row tasks.

``profile_group`` times all-to-all, all-reduce and all-gather on a live process group;
``time_gemm`` times the layer's own grouped dispatch (``dynroute.dispatch.grouped`` over
SwiGLU ``ExpertWeights``), ``time_dense`` the dense part's plain GEMMs and
``time_row_tasks`` the gate, order and inverse order. Every time is a
:func:`task_seconds`: from a barrier until the last rank is done, the trimmed mean of
``repeats`` runs;
``run_profile`` does all of it on W local gloo processes and writes a
:class:`~dynroute.parallel.costmodel.Profile` JSON (``dynroute profile``). Under torchrun
(NCCL on GPUs) :func:`profile_ranks` measures the launched job the same way: that is how
a real cluster calibrates ``dynroute plan``.

Example (W local processes; seconds)::

    >>> profile = run_profile(2, 1, "profile.json", sizes=(4096, 65536))  # doctest: +SKIP
    >>> profile.collective("all_to_all").time(1 << 20)                   # doctest: +SKIP
    0.0012
"""

from __future__ import annotations

import math
import platform
import socket
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dynroute.dispatch import grouped
from dynroute.dispatch.combine import combine
from dynroute.layers.experts import ExpertWeights
from dynroute.parallel.costmodel import COLLECTIVES, LinearFit, Profile, fit
from dynroute.parallel.hierarchy import HierarchicalExchange, Topology, topology
from dynroute.parallel.moe import local_routing
from dynroute.parallel.runtime import ParallelContext
from dynroute.parallel.spawn import run_ranks
from dynroute.routing import top_k

__all__ = [
    "DEFAULT_GEMM",
    "DEFAULT_SIZES",
    "MAX_CALLS",
    "MIN_RUN_S",
    "machine_name",
    "profile_group",
    "profile_ranks",
    "run_profile",
    "task_seconds",
    "time_dense",
    "time_gemm",
    "time_hierarchical_exchange",
    "time_row_tasks",
    "trimmed_mean",
]

#: Message sizes in bytes (each rank's buffer): small enough for a 2-core CPU in seconds.
DEFAULT_SIZES = (1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20)
#: (rows list, d_model, d_ff, local experts) of the GEMM and per-row measurements.
DEFAULT_GEMM: tuple[tuple[int, ...], int, int, int] = ((64, 256, 1024), 64, 256, 2)

Group = dist.ProcessGroup | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trimmed_mean(values: Sequence[float], cut: float = 0.1) -> float:
    """Mean of ``values`` without the lowest and highest ``cut`` fraction of them.

    Why a mean: a step is a sum of many tasks, so its typical time is near the sum of the
    tasks' means, which on a busy machine sit well above their medians (most runs are
    quick, some wait for a descheduled rank). Why trimmed: one run that met a stall of
    the whole machine would move a plain mean of a dozen runs by a lot.

    Example:
        >>> trimmed_mean([1.0, 1.0, 2.0, 2.0, 100.0], cut=0.2)
        1.6666666666666667
    """
    ordered = sorted(values)
    drop = int(len(ordered) * cut)
    kept = ordered[drop : len(ordered) - drop] or ordered
    return sum(kept) / len(kept)


#: A timed run lasts at least this long (``fn`` is called back to back as often as that
#: takes): a barrier's noise, a millisecond or more where ranks outnumber cores, is then
#: small beside the run instead of beside a 0.1 ms task.
MIN_RUN_S = 0.02
#: At most this many calls of ``fn`` in one timed run.
MAX_CALLS = 64


def task_seconds(
    fn: Callable[[], Any],
    repeats: int,
    device: torch.device,
    group: Group = None,
    min_run_s: float = MIN_RUN_S,
) -> float:
    """Typical wall time of one ``fn()``: the :func:`trimmed_mean` of ``repeats`` runs
    after one warm-up, each run ``calls`` back-to-back calls (as many as last
    ``min_run_s``, from the warm-up; at most :data:`MAX_CALLS`), divided by ``calls``.

    Under ``torch.distributed`` (or with a ``group``) a run is what a synchronous step
    sees: every rank of the group starts at a barrier and the run lasts until the *last*
    rank is done (a second barrier), less the typical time of the two barriers alone.
    (Each rank's own time would miss ranks that start late; where ranks outnumber
    cores, as 4 gloo ranks on 2 CPU cores, one that starts late runs alone and fast.)
    Calls run back to back, as a step's tasks do, and the barriers' noise is divided
    among ``calls`` of them instead of landing whole on one short task.

    Example:
        >>> task_seconds(lambda: sum(range(1000)), 3, torch.device("cpu")) > 0
        True
    """
    synced = group is not None or dist.is_initialized()

    def timed(calls: int) -> tuple[float, float]:
        """(seconds of ``calls`` calls, seconds of the two bare barriers) this rank saw."""
        if synced:
            dist.barrier(group=group)
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        if synced:
            dist.barrier(group=group)
        took = time.perf_counter() - start
        empty = 0.0
        if synced:
            dist.barrier(group=group)
            start = time.perf_counter()
            dist.barrier(group=group)
            empty = time.perf_counter() - start
        return took, empty

    first, _ = timed(1)  # also warms up (allocations, connections)
    if synced:  # every rank must call the collectives the same number of times
        first = _slowest([first], group, device)[0]
    calls = int(min(MAX_CALLS, max(1, math.ceil(min_run_s / max(first, 1e-9)))))
    runs = [timed(calls) for _ in range(repeats)]
    times, empty = [t for t, _ in runs], [e for _, e in runs]
    if not synced:
        return trimmed_mean(times) / calls
    # every rank saw nearly the same rounds: take the slowest view of each, so that every
    # rank returns the same time (ranks that planned from different fits would choose
    # different chunks and mismatch their collectives)
    both = _slowest(times + empty, group, device)
    return max(trimmed_mean(both[:repeats]) - trimmed_mean(both[repeats:]), 0.0) / calls


def _collective(name: str, nbytes: int, group: Group, device: torch.device) -> Callable[[], Any]:
    """A zero-argument call of collective ``name`` moving ``nbytes`` per rank."""
    world = dist.get_world_size(group)
    n = max(world, nbytes // 4 // world * world)  # float32 elements, a multiple of W
    send = torch.ones(n, device=device)
    if name == "all_to_all":
        recv = torch.empty_like(send)
        return lambda: dist.all_to_all_single(recv, send, group=group)
    if name == "all_reduce":
        return lambda: dist.all_reduce(send, group=group)
    if name == "all_gather":  # n bytes = the gathered output
        part = send[: n // world].clone()
        outs = [torch.empty_like(part) for _ in range(world)]
        return lambda: dist.all_gather(outs, part, group=group)
    raise ValueError(f"unknown collective {name!r}; known: {', '.join(COLLECTIVES)}")


def _slowest(values: list[float], group: Group, device: torch.device) -> list[float]:
    """Each value's maximum over the ranks of ``group``."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()


def profile_group(
    group: Group, sizes: Sequence[int], repeats: int, device: torch.device | None = None
) -> tuple[dict[str, LinearFit], dict[str, list[list[float]]]]:
    """Fit every collective of :data:`~dynroute.parallel.costmodel.COLLECTIVES` on ``group``.

    Every rank of ``group`` must call it with the same arguments.

    Returns:
        (collective -> fit in seconds vs bytes, collective -> [[bytes, seconds], ...]).
    """
    device = device or torch.device("cpu")
    fits, points = {}, {}
    for name in COLLECTIVES:
        typical = [
            task_seconds(_collective(name, n, group, device), repeats, device, group) for n in sizes
        ]
        fits[name] = fit(sizes, typical)
        points[name] = [[float(n), t] for n, t in zip(sizes, typical, strict=True)]
    return fits, points


def time_hierarchical_exchange(
    topo: Topology, sizes: Sequence[int], repeats: int, device: torch.device | None = None
) -> tuple[LinearFit, list[list[float]]]:
    """Fit the whole hierarchical all-to-all (:class:`HierarchicalExchange`: split sizes,
    inter-node stage, reorder, intra-node stage, reorder) vs the bytes a rank sends, with
    even splits of rows of 64 float32 values. Measured whole because its stages run on
    different groups, which finish at different times and wait for each other: the sum of
    the stages timed one by one misses that.

    Every rank must call it with the same arguments.

    Returns:
        (fit in seconds vs bytes, [[bytes, seconds], ...]).
    """
    device = device or torch.device("cpu")
    exchange, world, width = HierarchicalExchange(topo), topo.world_size, 64
    points = []
    for nbytes in sizes:
        rows = max(world, nbytes // (4 * width) // world * world)
        x = torch.ones(rows, width, device=device)
        splits = [rows // world] * world
        seconds = task_seconds(
            lambda x=x, splits=splits: exchange.start(x, splits, splits).wait(),
            repeats,
            device,
        )
        points.append([float(rows * width * 4), seconds])
    return fit([p[0] for p in points], [p[1] for p in points]), points


def _weights(local: int, d_model: int, d_ff: int, device: torch.device) -> ExpertWeights:
    g = torch.Generator().manual_seed(0)
    gate_up = torch.randn(local, d_model, 2 * d_ff, generator=g) / d_model**0.5
    down = torch.randn(local, d_ff, d_model, generator=g) / d_ff**0.5
    return ExpertWeights(gate_up.to(device), down.to(device))


def time_gemm(
    rows: Sequence[int],
    d_model: int,
    d_ff: int,
    local_experts: int,
    repeats: int,
    device: torch.device | None = None,
) -> tuple[LinearFit, LinearFit, list[list[float]]]:
    """Fit the experts' forward and backward times vs forward FLOPs (6·rows·d_model·d_ff,
    SwiGLU) with the layer's own grouped dispatch on rows split evenly over
    ``local_experts``; the backward is (forward + backward) − forward.

    Returns:
        (forward fit, backward fit, [[flops, forward s, backward s], ...]).

    Example:
        >>> forward, backward, points = time_gemm([32, 64], 16, 32, 2, repeats=2)
        >>> [p[0] for p in points]
        [98304.0, 196608.0]
    """
    device = device or torch.device("cpu")
    weights = _weights(local_experts, d_model, d_ff, device)
    trained = ExpertWeights(*(w.detach().requires_grad_(True) for w in weights[:2]))
    points = []
    for n in rows:
        counts = torch.full((1, local_experts), n // local_experts, dtype=torch.long)
        counts[0, : n % local_experts] += 1
        x = torch.randn(n, d_model, device=device)
        routing = local_routing(counts, x)
        with torch.no_grad():
            forward = task_seconds(partial(grouped, x, routing, weights), repeats, device, None)
        both = task_seconds(partial(_forward_backward, x, routing, trained), repeats, device)
        points.append([6.0 * n * d_model * d_ff, forward, max(both - forward, 0.0)])
    flops = [p[0] for p in points]
    return fit(flops, [p[1] for p in points]), fit(flops, [p[2] for p in points]), points


def time_dense(
    rows: Sequence[int], d_model: int, repeats: int, device: torch.device | None = None
) -> tuple[LinearFit, LinearFit, list[list[float]]]:
    """Fit the dense part's forward and backward times vs forward FLOPs: an MLP
    d_model → 2·d_model → d_model (4·d_model² weights, 8·rows·d_model² FLOPs), plain
    GEMMs, which run at another speed than the experts' grouped ones.

    Returns:
        (forward fit, backward fit, [[flops, forward s, backward s], ...]).

    Example:
        >>> forward, backward, points = time_dense([32, 64], 16, repeats=2)
        >>> [p[0] for p in points]
        [65536.0, 131072.0]
    """
    device = device or torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    up = (torch.randn(2 * d_model, d_model, generator=g) / d_model**0.5).to(device)
    down = (torch.randn(d_model, 2 * d_model, generator=g) / d_model**0.5).to(device)
    trained = [w.detach().requires_grad_(True) for w in (up, down)]
    points = []
    for n in rows:
        x = torch.randn(n, d_model, device=device)
        with torch.no_grad():
            forward = task_seconds(partial(_mlp, x, up, down), repeats, device)
        both = task_seconds(partial(_mlp_forward_backward, x, *trained), repeats, device)
        points.append([8.0 * n * d_model * d_model, forward, max(both - forward, 0.0)])
    flops = [p[0] for p in points]
    return fit(flops, [p[1] for p in points]), fit(flops, [p[2] for p in points]), points


def _mlp(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    linear = torch.nn.functional.linear
    return linear(linear(x, up), down)


def _mlp_forward_backward(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
    _mlp(x.detach().requires_grad_(True), up, down).sum().backward()


def _forward_backward(x: torch.Tensor, routing: Any, weights: ExpertWeights) -> None:
    grouped(x.detach().requires_grad_(True), routing, weights).sum().backward()


def time_row_tasks(
    rows: Sequence[int],
    d_model: int,
    experts: int,
    repeats: int,
    device: torch.device | None = None,
) -> tuple[dict[str, LinearFit], dict[str, list[list[float]]]]:
    """Fit the gate (the gate's linear map and the top-2 router that sorts the assignments
    by expert; seconds vs FLOPs, 2·tokens·d_model·experts), the order (gather of the rows
    into expert order) and the inverse order (weighted scatter-add back to tokens), both
    in seconds vs bytes of float32 rows."""
    device = device or torch.device("cpu")
    gate_w = torch.randn(experts, d_model, device=device)
    found: dict[str, list[list[float]]] = {"gate": [], "order": [], "inverse_order": []}
    with torch.no_grad():
        for n in rows:
            x = torch.randn(n, d_model, device=device)
            token = torch.randperm(n, device=device)
            weight = torch.rand(n, device=device)
            gate = task_seconds(partial(_gate, x, gate_w), repeats, device)
            order = task_seconds(partial(x.index_select, 0, token), repeats, device)
            inverse = task_seconds(partial(combine, x, token, weight, n), repeats, device)
            nbytes = float(n * d_model * 4)
            found["gate"].append([2.0 * n * d_model * experts, gate])
            found["order"].append([nbytes, order])
            found["inverse_order"].append([nbytes, inverse])
    fits = {k: fit([p[0] for p in v], [p[1] for p in v]) for k, v in found.items()}
    return fits, found


def _gate(x: torch.Tensor, gate_w: torch.Tensor) -> Any:
    return top_k(torch.nn.functional.linear(x, gate_w), min(2, gate_w.shape[0]))


def profile_ranks(
    ctx: ParallelContext,
    nnodes: int,
    sizes: Sequence[int] = DEFAULT_SIZES,
    repeats: int = 5,
    gemm: tuple[Sequence[int], int, int, int] = DEFAULT_GEMM,
) -> Profile:
    """Measure this job (every rank calls it): the flat group, with ``nnodes`` > 1 the
    intra-node and inter-node groups (``world_size // nnodes`` consecutive ranks a node),
    the expert GEMMs and per-row tasks (slowest rank's)."""
    world, device = ctx.world_size, ctx.device
    if nnodes < 1 or world % nnodes:
        raise ValueError(f"--nnodes {nnodes} must divide the processes ({world})")
    collectives, points = {}, {}
    collectives["flat"], points["flat"] = profile_group(None, sizes, repeats, device)
    hierarchical = None
    if nnodes > 1:
        topo = topology(nnodes)  # this rank's node group and its same-local-index group
        for link, group in (("intra", topo.intra), ("inter", topo.inter)):
            collectives[link], points[link] = profile_group(group, sizes, repeats, device)
        hierarchical, points["hierarchical_exchange"] = time_hierarchical_exchange(
            topo, sizes, repeats, device
        )
    rows, d_model, d_ff, local = gemm
    gemm_fit, backward_fit, points["gemm"] = time_gemm(rows, d_model, d_ff, local, repeats, device)
    dense_fit, dense_backward_fit, points["dense"] = time_dense(rows, d_model, repeats, device)
    row_fits, points_of_rows = time_row_tasks(rows, d_model, local * world, repeats, device)
    points.update(points_of_rows)
    return Profile(
        machine=machine_name(device),
        world_size=world,
        nnodes=nnodes,
        backend=ctx.backend,
        collectives=collectives,
        gemm=gemm_fit,  # every rank's: the times are already the slowest rank's per run
        gemm_backward=backward_fit,
        row_tasks=row_fits,
        element_bytes=4,
        points=points,
        dense=dense_fit,
        dense_backward=dense_backward_fit,
        hierarchical_exchange=hierarchical,
    )


def machine_name(device: torch.device) -> str:
    """Host name and processor (or GPU) of this process."""
    if device.type == "cuda":
        chip = torch.cuda.get_device_name(device)
    else:
        chip = platform.processor() or platform.machine()
    return f"{socket.gethostname()} ({chip})"


def _rank_profile(
    ctx: ParallelContext,
    nnodes: int,
    sizes: Sequence[int],
    repeats: int,
    gemm: tuple[Sequence[int], int, int, int],
) -> Profile | None:
    profile = profile_ranks(ctx, nnodes, sizes, repeats, gemm)
    return profile if ctx.is_main else None


def run_profile(
    world: int,
    nnodes: int,
    out: Path | str,
    sizes: Sequence[int] = DEFAULT_SIZES,
    repeats: int = 5,
    gemm: tuple[Sequence[int], int, int, int] = DEFAULT_GEMM,
    timeout_s: float = 600.0,
    threads: int = 1,
) -> Profile:
    """Profile ``world`` local gloo processes (``threads`` torch threads each) declared as
    ``nnodes`` nodes; write the profile JSON to ``out`` and return it.

    Raises:
        ValueError: ``world`` < 2, or ``nnodes`` does not divide it (naming the flag).
    """
    if world < 2:
        raise ValueError(f"--procs must be >= 2 (a collective needs two ranks), got {world}")
    if nnodes < 1 or world % nnodes:
        raise ValueError(f"--nnodes {nnodes} must divide --procs {world}")
    if not sizes or min(sizes) <= 0:
        raise ValueError(f"--sizes must be positive byte counts, got {list(sizes)}")
    results = run_ranks(
        _rank_profile, world, (nnodes, tuple(sizes), repeats, gemm),
        timeout_s=timeout_s, collective_timeout_s=min(timeout_s, 120.0), threads=threads,
    )  # fmt: skip
    profile = results[0]
    profile.save(out)
    return profile
