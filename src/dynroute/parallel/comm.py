"""Token exchange over torch.distributed: variable-size all-to-all with an autograd backward."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

Group = dist.ProcessGroup | None


@dataclass
class CommMeter:
    """Running totals of the all-to-all traffic of this rank (forward and backward).

    Attributes:
        calls: number of all-to-all calls (count exchanges included).
        bytes_sent: bytes this rank sent to *other* ranks (its own share stays local).
        bytes_received: bytes this rank received from other ranks.
        seconds: wall time spent inside the collectives (waiting for slower ranks included;
            exact on gloo, which blocks; NCCL returns early, so time GPU runs with
            torch.cuda.synchronize() or the profiler instead).
        rows_sent: activation rows sent to other ranks (count exchanges excluded).

    Example:
        >>> m = CommMeter()
        >>> m.add(sent=8, received=4, seconds=0.5, rows=2)
        >>> m.bytes_sent, m.rows_sent
        (8, 2)
    """

    calls: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    rows_sent: int = 0
    exchanges: list[tuple[list[int], list[int], int]] = field(default_factory=list, repr=False)
    """(out_splits, in_splits, bytes per row) of every row exchange, to replay them."""

    def add(self, sent: int, received: int, seconds: float, rows: int = 0) -> None:
        """Record one call."""
        self.calls += 1
        self.bytes_sent += sent
        self.bytes_received += received
        self.seconds += seconds
        self.rows_sent += rows


Meters = tuple[CommMeter, ...]

# The meters of the enclosing ``measure_comm`` blocks: scoped like torch.no_grad (set on
# entry, restored on exit, per thread and task), never a list that outlives its block.
# A forward exchange hands its meters to its autograd node, so the backward is counted
# even where autograd runs it on another thread (CUDA), which sees no context.
_ACTIVE_METERS: ContextVar[Meters] = ContextVar("dynroute_comm_meters", default=())


@contextmanager
def measure_comm() -> Iterator[CommMeter]:
    """Count the bytes and time of every expert-parallel all-to-all inside the block.

    An exchange whose forward ran inside the block is counted in its backward too.

    Example:
        >>> with measure_comm() as meter:
        ...     pass
        >>> meter.calls
        0
    """
    meter = CommMeter()
    token = _ACTIVE_METERS.set((*_ACTIVE_METERS.get(), meter))
    try:
        yield meter
    finally:
        _ACTIVE_METERS.reset(token)


def _exchange(
    x: Tensor, out_splits: Sequence[int], in_splits: Sequence[int], group: Group, meters: Meters
) -> Tensor:
    out = x.new_empty((sum(out_splits), *x.shape[1:]))
    start = time.perf_counter()
    try:
        dist.all_to_all_single(out, x.contiguous(), list(out_splits), list(in_splits), group=group)
    except RuntimeError as e:  # gloo/NCCL say "timed out"; say why that happens and what to do
        raise RuntimeError(
            f"expert-parallel all-to-all failed on rank {dist.get_rank(group)} of "
            f"{dist.get_world_size(group)}: {e}. Another rank probably stopped (crashed, or "
            "skipped this layer's forward or backward): every rank must run the same layers "
            "the same number of times. The wait is bounded by init_process_group(timeout=...) "
            "(DYNROUTE_DIST_TIMEOUT for init_from_env)."
        ) from e
    if meters:
        count_exchange(meters, x, out_splits, in_splits, dist.get_rank(group), start)
    return out


def active_meters() -> Meters:
    """The meters of the enclosing :func:`measure_comm` blocks (empty outside any).

    An exchange that does not go through :func:`all_to_all` (the pipelined layer's
    asynchronous ones) takes them when it starts and reports to them with
    :func:`count_exchange`.

    Example:
        >>> with measure_comm() as meter:
        ...     active_meters() == (meter,)
        True
    """
    return _ACTIVE_METERS.get()


def count_exchange(
    meters: Meters,
    x: Tensor,
    out_splits: Sequence[int],
    in_splits: Sequence[int],
    rank: int,
    started: float,
) -> None:
    """Add one exchange of ``x`` (sent by ``rank``, begun at ``perf_counter`` time
    ``started``) to ``meters``; 1-D tensors count as count exchanges, not activation rows."""
    seconds = time.perf_counter() - started
    row_bytes = math.prod(x.shape[1:]) * x.element_size()
    sent, received = sum(in_splits) - in_splits[rank], sum(out_splits) - out_splits[rank]
    for meter in meters:
        meter.add(sent * row_bytes, received * row_bytes, seconds, sent if x.dim() > 1 else 0)
        if x.dim() > 1:
            meter.exchanges.append((list(out_splits), list(in_splits), row_bytes))


class _AllToAll(torch.autograd.Function):
    """all_to_all_single whose backward sends the gradients back along the reverse routes.

    Not ``torch.distributed.nn.functional.all_to_all_single``: it computes the same (uneven
    splits, gloo included), but torch 2.13 deprecates it (a FutureWarning) in favour of a
    private module, and its backward would skip the meters and the error message below.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        out_splits: list[int],
        in_splits: list[int],
        group: Group,
    ) -> Tensor:
        meters = _ACTIVE_METERS.get()
        ctx.out_splits, ctx.in_splits, ctx.group = out_splits, in_splits, group  # type: ignore[attr-defined]
        ctx.meters = meters  # type: ignore[attr-defined]
        return _exchange(x, out_splits, in_splits, group, meters)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor, None, None, None]:
        c = ctx  # the splits swap roles: what was received is now sent back
        back = _exchange(grad, c.in_splits, c.out_splits, c.group, c.meters)  # type: ignore[attr-defined]
        return back, None, None, None


def all_to_all(
    x: Tensor, out_splits: Sequence[int], in_splits: Sequence[int], group: Group = None
) -> Tensor:
    """Differentiable variable-size all-to-all of rows.

    Rank r sends ``x`` split into ``in_splits`` consecutive chunks (chunk j to rank j)
    and receives ``out_splits[j]`` rows from rank j, concatenated in rank order. The
    backward pass runs the same collective with the splits swapped, so the gradient
    of each row returns to the rank that sent it. Every rank of ``group`` must call it,
    in the same order, and later run its backward.

    Args:
        x: [sum(in_splits), ...] rows to send.
        out_splits: rows to receive from each rank, len = group size.
        in_splits: rows to send to each rank, len = group size.
        group: process group (default: the world).

    Returns:
        [sum(out_splits), ...].

    Example:
        >>> import torch
        >>> from dynroute.parallel import local_group
        >>> with local_group():  # a world of one process
        ...     all_to_all(torch.ones(3, 2, requires_grad=True), [3], [3]).shape
        torch.Size([3, 2])
    """
    return _AllToAll.apply(x, list(out_splits), list(in_splits), group)


def exchange_counts(send_counts: Tensor, group: Group = None) -> Tensor:
    """Tell every rank how many rows it will receive for each of its experts.

    Args:
        send_counts: LongTensor [W·E_local], rows this rank sends to each global expert
            (experts of rank j are j·E_local … (j+1)·E_local − 1).
        group: process group of W ranks.

    Returns:
        LongTensor [W, E_local]: row s, column e = rows rank s sends to this rank's
        local expert e.

    Example:
        >>> import torch
        >>> from dynroute.parallel import local_group
        >>> with local_group():
        ...     exchange_counts(torch.tensor([2, 0, 5])).tolist()
        [[2, 0, 5]]
    """
    world = dist.get_world_size(group)
    if send_counts.numel() % world:
        raise ValueError(
            f"exchange_counts: {send_counts.numel()} counts do not split over {world} ranks"
        )
    chunk = [send_counts.numel() // world] * world
    return _exchange(send_counts, chunk, chunk, group, _ACTIVE_METERS.get()).view(world, -1)
