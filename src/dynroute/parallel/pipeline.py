"""The pipelined schedule of an expert-parallel MoE layer (FSMoE, Tutel): chunks of tokens
whose exchanges overlap the expert GEMMs of other chunks, forward and backward.

An expert-parallel layer call is six tasks (FSMoE's): **gate** (router and losses),
**order** (gather the assigned rows, sorted by expert), **dispatch** (all-to-all to the
experts' ranks), **experts** (the local grouped GEMMs), **combine** (all-to-all back) and
**inverse order** (scale by the combine weights, sum per token). With ``r`` chunks the
tokens are cut into ``r`` contiguous ranges and the dispatch of chunk i+1 and the combine
of chunk i travel while the experts of other chunks compute:

    order(0) dispatch(0) ─┐
    order(1) dispatch(1) ─┼─ wait(0) experts(0) combine(0) ─┐
    order(2) dispatch(2) ─┼─ wait(1) experts(1) combine(1) ─┼─ ... inverse order(0), (1), ...

The exchanges are :class:`~dynroute.parallel.exchange.Exchange` objects (flat or
hierarchical), wrapped in two autograd nodes each: the forward *start* node begins the
exchange, a later *wait* node collects it. In the backward the wait node starts the
reverse exchange (the splits swapped) and the start node collects it, so the backward
pipelines the same way. Every rank issues the same collectives in the same order (an
empty chunk sends zero rows), forward and backward.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from dynroute.dispatch.combine import combine
from dynroute.parallel.comm import Group, active_meters, count_exchange, exchange_counts
from dynroute.parallel.exchange import Exchange, PendingExchange
from dynroute.routing import Routing

FnCtx = torch.autograd.function.FunctionCtx

TASKS = ("gate", "order", "dispatch", "experts", "combine", "inverse_order")
"""The tasks of an expert-parallel layer call, in their order (FSMoE's six)."""


# ---------------------------------------------------------------------------------------------
# Differentiable start / wait over any Exchange


class InFlight:
    """One differentiable exchange between its start and its wait (forward or backward).

    Made by :func:`start_exchange`; :func:`wait_exchange` returns the rows. Holds the
    exchange in flight, shared by the start and the wait autograd nodes.
    """

    def __init__(
        self, exchange: Exchange, out_splits: list[int], in_splits: list[int], rank: int
    ) -> None:
        self.exchange, self.out_splits, self.in_splits = exchange, out_splits, in_splits
        self.rank = rank
        self.pending: PendingExchange | None = None
        self.token: Tensor | None = None  # start node's output: orders the wait after it
        # measure_comm blocks around the forward count the backward too (as all_to_all's)
        self.meters = active_meters()
        self.sent: tuple[Tensor, list[int], list[int], float] | None = None

    def begin(self, x: Tensor, out_splits: list[int], in_splits: list[int]) -> None:
        if self.pending is not None:
            raise RuntimeError("pipelined exchange: started twice before a wait")
        started = time.perf_counter()
        self.pending = self.exchange.start(x.contiguous(), out_splits, in_splits)
        self.sent = (x, out_splits, in_splits, started)

    def collect(self) -> Tensor:
        if self.pending is None or self.sent is None:
            raise RuntimeError(
                "pipelined exchange: waited for an exchange that was not started; call "
                "wait_exchange once per start_exchange, in the order they were started"
            )
        rows, self.pending = self.pending.wait(), None
        if self.meters:  # the seconds span start to wait: the overlapped work included
            count_exchange(self.meters, *self.sent[:3], self.rank, self.sent[3])
        self.sent = None
        return rows


class _Start(torch.autograd.Function):
    """Forward: start the exchange. Backward: wait for the reverse exchange's gradient."""

    @staticmethod
    def forward(ctx: FnCtx, x: Tensor, flight: InFlight) -> Tensor:  # type: ignore[override]
        flight.begin(x, flight.out_splits, flight.in_splits)
        ctx.flight = flight  # type: ignore[attr-defined]
        return x.new_empty(0)

    @staticmethod
    def backward(ctx: FnCtx, _token: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.flight.collect(), None  # type: ignore[attr-defined]


class _Wait(torch.autograd.Function):
    """Forward: wait for the rows. Backward: start sending their gradient back."""

    @staticmethod
    def forward(ctx: FnCtx, token: Tensor, flight: InFlight) -> Tensor:  # type: ignore[override]
        ctx.flight = flight  # type: ignore[attr-defined]
        return flight.collect()

    @staticmethod
    def backward(ctx: FnCtx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        f: InFlight = ctx.flight  # type: ignore[attr-defined]
        f.begin(grad, f.in_splits, f.out_splits)  # the splits swap roles: rows go home
        return grad.new_zeros(0), None


def start_exchange(
    x: Tensor, exchange: Exchange, out_splits: Sequence[int], in_splits: Sequence[int]
) -> InFlight:
    """Start a differentiable all-to-all of ``x`` [sum(in_splits), ...] over ``exchange``.

    Same semantics as :func:`~dynroute.parallel.comm.all_to_all`, split in two so that
    other work runs between the start and :func:`wait_exchange`, in the forward and in
    the backward. Every rank must start (and wait for) its exchanges in the same order.

    Example:
        >>> import torch
        >>> from dynroute.parallel import FlatExchange, local_group
        >>> with local_group():
        ...     x = torch.ones(3, 2, requires_grad=True)
        ...     flight = start_exchange(x, FlatExchange(), [3], [3])
        ...     y = wait_exchange(flight)  # other work could run in between
        ...     (2 * y).sum().backward()
        ...     x.grad[:, 0].tolist()
        [2.0, 2.0, 2.0]
    """
    rank = dist.get_rank(exchange.group)
    flight = InFlight(exchange, list(out_splits), list(in_splits), rank)
    if torch.is_grad_enabled() and not x.requires_grad:
        # Every rank must run the backward exchange; make it not depend on this rank's input.
        x = x.detach().requires_grad_(True)
    flight.token = _Start.apply(x, flight)
    return flight


def wait_exchange(flight: InFlight) -> Tensor:
    """The rows of an exchange from :func:`start_exchange`, [sum(out_splits), ...]."""
    assert flight.token is not None
    return _Wait.apply(flight.token, flight)


# ---------------------------------------------------------------------------------------------
# Timing the six tasks


@dataclass
class TaskTimes:
    """Seconds per task (:data:`TASKS`) of every expert-parallel layer call in a block.

    Each forward of an ``ExpertParallelMoE`` inside :func:`measure_tasks` appends one
    plain dict ``{task: seconds}`` to ``calls``, in call order (so, for a model, layer
    by layer). Compute tasks are their wall time; ``dispatch`` and ``combine`` are the
    time this rank spent starting and waiting for exchanges (count exchange included):
    with one chunk the whole exchange, with several only what computation did not hide.
    The backward is not timed. On CUDA each task boundary synchronises the device
    (timing changes the overlap it measures; profile with chunks=1 for α, β).

    Example:
        >>> t = TaskTimes([{"experts": 1.0, "gate": 0.5}, {"experts": 2.0}])
        >>> t.total()["experts"]
        3.0
    """

    calls: list[dict[str, float]] = field(default_factory=list)

    def total(self) -> dict[str, float]:
        """Seconds per task summed over the calls."""
        return {task: sum(c.get(task, 0.0) for c in self.calls) for task in TASKS}


_ACTIVE_TASK_TIMES: ContextVar[tuple[TaskTimes, ...]] = ContextVar(
    "dynroute_task_times", default=()
)


class TaskClock:
    """Laps of one layer call: ``lap(task)`` charges the time since the last lap to ``task``."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.sync = device is not None and device.type == "cuda"
        self.seconds = dict.fromkeys(TASKS, 0.0)
        self.last = time.perf_counter()

    def lap(self, task: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[task] += now - self.last
        self.last = now


class _NoClock(TaskClock):
    """The clock outside :func:`measure_tasks`: records nothing, costs nothing."""

    def __init__(self) -> None:
        pass

    def lap(self, task: str) -> None:
        pass


_NO_CLOCK = _NoClock()
_LAYER_CLOCK: ContextVar[TaskClock] = ContextVar("dynroute_layer_clock", default=_NO_CLOCK)


@contextmanager
def measure_tasks() -> Iterator[TaskTimes]:
    """Time the six tasks of every expert-parallel layer call inside the block.

    Scoped like :func:`~dynroute.parallel.comm.measure_comm` (per thread and task;
    blocks nest).

    Example:
        >>> import torch
        >>> from dynroute.layers import MoE
        >>> from dynroute.parallel import local_group, shard_experts
        >>> with local_group():
        ...     ep = shard_experts(MoE(8, 16, 4))
        ...     with measure_tasks() as times:
        ...         _ = ep(torch.randn(5, 8))
        >>> len(times.calls), sorted(times.calls[0]) == sorted(TASKS)
        (1, True)
    """
    times = TaskTimes()
    token = _ACTIVE_TASK_TIMES.set((*_ACTIVE_TASK_TIMES.get(), times))
    try:
        yield times
    finally:
        _ACTIVE_TASK_TIMES.reset(token)


@contextmanager
def timed_layer_call(device: torch.device) -> Iterator[TaskClock]:
    """Around one layer call: a clock when :func:`measure_tasks` is active (its laps are
    appended to every active :class:`TaskTimes` on exit), else a clock that records nothing."""
    active = _ACTIVE_TASK_TIMES.get()
    if not active:
        yield _NO_CLOCK
        return
    clock = TaskClock(device)
    token = _LAYER_CLOCK.set(clock)
    try:
        yield clock
    finally:
        _LAYER_CLOCK.reset(token)
    for times in active:
        times.calls.append(dict(clock.seconds))


def task_clock() -> TaskClock:
    """The clock of the layer call in progress (one that records nothing when none is timed)."""
    return _LAYER_CLOCK.get()


# ---------------------------------------------------------------------------------------------
# The pipelined layer


def chunk_bounds(num_tokens: int, chunks: int) -> list[int]:
    """Token boundaries of ``chunks`` contiguous, near-equal ranges: chunk i = [b_i, b_i+1).

    Example:
        >>> chunk_bounds(9, 4), chunk_bounds(2, 4)
        ([0, 2, 4, 6, 9], [0, 0, 1, 1, 2])
    """
    if chunks < 1:
        raise ValueError(f"chunk_bounds: chunks must be >= 1, got {chunks}")
    return [i * num_tokens // chunks for i in range(chunks + 1)]


@dataclass
class ChunkPlan:
    """Which assignments go in which chunk, and how many rows each chunk sends and receives.

    Attributes:
        bounds: token boundaries (:func:`chunk_bounds`).
        order: LongTensor [A], assignments grouped by chunk, routing order kept inside one.
        starts: assignment offsets of the chunks in ``order``, len r + 1.
        in_splits, out_splits: per chunk, rows sent to / received from each rank.
        recv_counts: per chunk, LongTensor [W, E_local] (rows per source rank, local expert).
    """

    bounds: list[int]
    order: Tensor
    starts: list[int]
    in_splits: list[list[int]]
    out_splits: list[list[int]]
    recv_counts: list[Tensor]


def plan_chunks(routing: Routing, chunks: int, world: int, group: Group = None) -> ChunkPlan:
    """Cut this rank's assignments into ``chunks`` by token range; exchange every chunk's
    per-expert counts in one all-to-all (every rank must call it).

    Example:
        >>> import torch
        >>> from dynroute.parallel import local_group
        >>> from dynroute.routing import top_k
        >>> r = top_k(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), k=1)
        >>> with local_group():
        ...     plan = plan_chunks(r, 2, world=1)
        >>> plan.bounds, plan.order.tolist(), plan.in_splits, plan.recv_counts[1].tolist()
        ([0, 1, 3], [1, 0, 2], [[1], [2]], [[1, 1]])
    """
    e, device = routing.num_experts, routing.expert.device
    local_e = e // world
    bounds = chunk_bounds(routing.num_tokens, chunks)
    ends = torch.tensor(bounds[1:], dtype=routing.token.dtype, device=device)
    chunk = torch.searchsorted(ends, routing.token, right=True)
    order = torch.sort(chunk, stable=True).indices
    counts = torch.zeros(chunks * e, dtype=torch.long, device=device)
    counts.index_add_(0, chunk * e + routing.expert, torch.ones_like(routing.expert))
    # Rank j's block holds the counts of its experts for every chunk: [W, r, E_local].
    send = counts.view(chunks, world, local_e).transpose(0, 1).reshape(-1)
    recv = exchange_counts(send, group).view(world, chunks, local_e)
    in_splits = counts.view(chunks, world, local_e).sum(2).tolist()
    out_splits = recv.sum(2).t().tolist()
    starts = [0]
    for sent in in_splits:
        starts.append(starts[-1] + sum(sent))
    return ChunkPlan(bounds, order, starts, in_splits, out_splits, list(recv.unbind(1)))


def pipelined_exchange_and_run(
    flat: Tensor,
    routing: Routing,
    run_local: Callable[[Tensor, Tensor], Tensor],
    exchange: Exchange,
    chunks: int,
    group: Group = None,
) -> Tensor:
    """The expert-parallel layer's exchange and experts, pipelined over ``chunks``.

    Chunk i holds the assignments of tokens [b_i, b_i+1) (:func:`chunk_bounds`). The
    dispatch exchange of chunk i+1 starts before the experts of chunk i run, and the
    combine exchange of chunk i travels while later chunks compute; the backward
    overlaps the same way. Combine weights are applied here, at the token's own rank.

    Args:
        flat: [N, d] this rank's tokens; routing: their assignments (sorted by expert).
        run_local: (received rows [R, d], counts LongTensor [W, E_local]) -> outputs
            [R, d], in arrival order (the layer's local experts).
        exchange: moves the rows (flat, hierarchical, any :class:`Exchange`).
        chunks: r >= 1 (chunks may be empty; every rank still exchanges them).
        group: the expert-parallel group (for the counts exchange).

    Returns:
        [N, d]: Σ over each token's assignments of weight · expert(x).

    Example:
        >>> import torch
        >>> from dynroute.layers import MoE
        >>> from dynroute.parallel import FlatExchange, local_group, local_routing
        >>> moe = MoE(8, 16, 4)
        >>> x = torch.randn(5, 8)
        >>> routing = moe.route(moe.gate(x).float())
        >>> def run_local(rows, counts):
        ...     return moe.dispatch(rows, local_routing(counts, rows), moe.experts)
        >>> with local_group():
        ...     y = pipelined_exchange_and_run(x, routing, run_local, FlatExchange(), 3)
        >>> torch.allclose(y, moe.dispatch(x, routing, moe.experts), atol=1e-6)
        True
    """
    clock = task_clock()
    plan = plan_chunks(routing, chunks, dist.get_world_size(group), group)
    token = routing.token[plan.order]
    weight = routing.weight[plan.order]
    clock.lap("dispatch")
    cuts = [slice(plan.starts[i], plan.starts[i + 1]) for i in range(chunks)]

    def dispatch(i: int) -> InFlight:
        send = flat[token[cuts[i]]]
        clock.lap("order")
        flight = start_exchange(send, exchange, plan.out_splits[i], plan.in_splits[i])
        clock.lap("dispatch")
        return flight

    inbound, outbound = [dispatch(0)], []
    for i in range(chunks):
        if i + 1 < chunks:
            inbound.append(dispatch(i + 1))
        rows = wait_exchange(inbound[i])
        clock.lap("dispatch")
        out = run_local(rows, plan.recv_counts[i])
        clock.lap("experts")
        outbound.append(start_exchange(out, exchange, plan.in_splits[i], plan.out_splits[i]))
        clock.lap("combine")
    ys = []
    for i, lo, hi in zip(range(chunks), plan.bounds, plan.bounds[1:], strict=False):
        back = wait_exchange(outbound[i])
        clock.lap("combine")
        ys.append(combine(back, token[cuts[i]] - lo, weight[cuts[i]], hi - lo))
        clock.lap("inverse_order")
    y = torch.cat(ys)
    clock.lap("inverse_order")
    return y
