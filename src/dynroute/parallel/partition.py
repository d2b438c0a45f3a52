"""Gradient partitioning (FSMoE): the dense gradients' all-reduce, cut to fit the MoE backward.

DistributedDataParallel all-reduces the replicated (dense) gradients in fixed 25 MiB
buckets. Under expert parallelism the backward pass has idle stretches on the network
between its all-to-alls (the expert GEMMs, attention); FSMoE sizes each all-reduce so its
modelled time (``alpha + beta * bytes``) fills one such gap. Two parts:

* :func:`plan_partitions` — a pure planner: the dense parameters' sizes in the order their
  gradients become ready, the gaps (seconds) and an all-reduce cost fit give the partitions
  (lists of parameter indices); with no gaps it falls back to fixed-size buckets
  (:func:`bucket_partitions`).
* :class:`PartitionedDataParallel` (built by :func:`wrap_partitioned`, the counterpart of
  ``wrap_ddp``) — issues each partition's ``all_reduce(async_op=True)`` as soon as its last
  gradient is accumulated, on a process group of its own (so it never queues behind the
  expert all-to-alls), and writes the averaged gradients back at the end of the backward.
  The gradients equal DDP's (with ``find_unused_parameters=True``).

How a training loop uses it (the same calls as DDP, plus one optional ``finish``)::

    run = wrap_partitioned(shard_model_experts(model, expert_group), partitions)
    for step in steps:
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with contextlib.nullcontext() if last else run.no_sync():
                run(batch).loss.backward()    # partitions go out during this backward
        run.finish()     # no-op when the backward already finished the step (it does, unless
                         # this rank's backward reached no dense parameter); before clip/step
        clip_grad_norm_(model, 1.0); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dynroute.parallel.ddp import average_expert_grads_over_ranks, expert_parameter_names
from dynroute.parallel.moe import require_group
from dynroute.parallel.runtime import timeout_from_env

DEFAULT_BUCKET_BYTES = 25 * 2**20
"""The fallback partition size when no gaps are known: DDP's default bucket (25 MiB)."""


class TimedCost(Protocol):
    """A cost model with ``time(nbytes) -> seconds`` (e.g. a fitted all-reduce profile)."""

    def time(self, nbytes: int) -> float: ...


AllReduceFit = tuple[float, float] | TimedCost | Callable[[int], float]
"""An all-reduce cost: ``(alpha_s, beta_s_per_byte)``, an object with ``.time(nbytes)``, or a
plain callable ``seconds(nbytes)``."""


def allreduce_seconds(fit: AllReduceFit) -> Callable[[int], float]:
    """The modelled all-reduce time of a message, as a function of its size in bytes.

    Example:
        >>> allreduce_seconds((1e-4, 1e-9))(1000)  # alpha + beta * bytes
        0.000101
        >>> allreduce_seconds(lambda n: 2.0 * n)(3)
        6.0
    """
    if isinstance(fit, tuple):
        if len(fit) != 2:
            raise ValueError(f"all-reduce fit {fit!r}: give (alpha_s, beta_s_per_byte)")
        alpha, beta = float(fit[0]), float(fit[1])
        return lambda nbytes: alpha + beta * nbytes
    timed = getattr(fit, "time", None)
    if callable(timed):
        return timed
    if callable(fit):
        return fit
    raise TypeError(
        f"all-reduce fit {fit!r}: give (alpha, beta), an object with .time(nbytes), "
        "or a callable seconds(nbytes)"
    )


@dataclass(frozen=True)
class Partition:
    """One all-reduce: parameter indices (in backward order), their bytes, the gap it fills.

    Attributes:
        params: indices into the planner's parameter list, ascending and contiguous.
        nbytes: total gradient bytes.
        gap: index of the gap it fills, or None for a fallback bucket (after the gaps).
        seconds: modelled all-reduce time (None when planned without a cost fit).
    """

    params: tuple[int, ...]
    nbytes: int
    gap: int | None = None
    seconds: float | None = None


def _checked_sizes(param_bytes: Sequence[int]) -> list[int]:
    sizes = [int(b) for b in param_bytes]
    if any(b < 0 for b in sizes):
        raise ValueError(f"parameter sizes must be >= 0 bytes, got {sizes}")
    return sizes


def bucket_partitions(
    param_bytes: Sequence[int], bucket_bytes: int = DEFAULT_BUCKET_BYTES, start: int = 0
) -> list[Partition]:
    """DDP-style fixed buckets: consecutive parameters up to ``bucket_bytes`` each.

    A parameter larger than a bucket gets one of its own. ``start`` offsets the indices
    (for the parameters left after the gaps).

    Example:
        >>> [p.params for p in bucket_partitions([3, 3, 3, 9, 1], bucket_bytes=6)]
        [(0, 1), (2,), (3,), (4,)]
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    out: list[Partition] = []
    current: list[int] = []
    total = 0
    for index, size in enumerate(_checked_sizes(param_bytes), start):
        if current and total + size > bucket_bytes:
            out.append(Partition(tuple(current), total))
            current, total = [], 0
        current.append(index)
        total += size
    if current:
        out.append(Partition(tuple(current), total))
    return out


def plan_partitions(
    param_bytes: Sequence[int],
    gaps_s: Sequence[float] = (),
    fit: AllReduceFit | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> list[Partition]:
    """Cut the dense gradients into all-reduces that each fill one gap of the MoE backward.

    Greedy, in backward order: gap g takes the longest run of the next parameters whose
    modelled all-reduce time ``fit(bytes)`` is at most ``gaps_s[g]``. When even the next
    parameter alone is too big, it goes alone into this gap (overflowing it) only if no
    later gap can hold it and the gap is longer than the fixed cost ``fit(0)``: its exposed
    time ``fit(b) - gap`` then beats the ``fit(b) - fit(0)`` it adds to the exposed last
    bucket; otherwise the gap stays empty. What is left after the last gap goes in
    ``bucket_bytes`` buckets, as with no gaps (issued when the backward ends: exposed).

    Args:
        param_bytes: gradient bytes of the dense parameters, in the order their gradients
            become ready in the backward (``dense_parameters`` gives DDP's order).
        gaps_s: idle network time between the backward's all-to-alls, in order (seconds).
        fit: the all-reduce cost (see :data:`AllReduceFit`); needed when gaps are given.
        bucket_bytes: the fallback bucket size.

    Returns:
        Partitions covering every index once, in order.

    Example:
        >>> plan = plan_partitions([4, 4, 4, 4, 4], gaps_s=[1.0, 0.2, 0.5], fit=(0.1, 0.1))
        >>> [(p.params, p.gap) for p in plan]  # gap 1 is too short for any; 2 overflows
        [((0, 1), 0), ((2,), 2), ((3, 4), None)]
        >>> [p.params for p in plan_partitions([4, 4, 4], bucket_bytes=8)]  # no gaps known
        [(0, 1), (2,)]
    """
    sizes = _checked_sizes(param_bytes)
    gaps = [float(g) for g in gaps_s]
    if any(not (math.isfinite(g) and g >= 0) for g in gaps):
        raise ValueError(f"gaps_s must be finite and >= 0 seconds, got {gaps}")
    seconds = allreduce_seconds(fit) if fit is not None else None
    if gaps and seconds is None:
        raise ValueError("plan_partitions: gaps_s given without a fit; pass fit=(alpha, beta)")
    out: list[Partition] = []
    i = 0
    for g, gap in enumerate(gaps):
        if i == len(sizes) or seconds is None:
            break
        j, total = i, 0
        while j < len(sizes) and seconds(total + sizes[j]) <= gap:
            total += sizes[j]
            j += 1
        if j == i:
            if gap <= seconds(0) or any(seconds(sizes[i]) <= later for later in gaps[g + 1 :]):
                continue
            j, total = i + 1, sizes[i]
        out.append(Partition(tuple(range(i, j)), total, g, seconds(total)))
        i = j
    for bucket in bucket_partitions(sizes[i:], bucket_bytes, start=i):
        cost = seconds(bucket.nbytes) if seconds is not None else None
        out.append(Partition(bucket.params, bucket.nbytes, None, cost))
    return out


def dense_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The replicated parameters (not the sharded experts) that train, in backward order.

    The order is the reverse of registration, as DDP assumes (a model's last layers get
    their gradients first); partitions index into this list.

    Example:
        >>> from dynroute.layers import MoE
        >>> from dynroute.parallel import local_group, shard_model_experts
        >>> with local_group():
        ...     net = shard_model_experts(nn.Sequential(nn.Linear(8, 8), MoE(8, 16, 2)))
        ...     [name for name, _ in dense_parameters(net)]
        ['1.gate.weight', '0.bias', '0.weight']
    """
    experts = set(expert_parameter_names(model))
    named = [(n, p) for n, p in model.named_parameters() if n not in experts and p.requires_grad]
    return named[::-1]


def parameter_bytes(params: Sequence[Tensor]) -> list[int]:
    """Gradient bytes of each parameter (the planner's ``param_bytes``).

    Example:
        >>> parameter_bytes([torch.zeros(3, 4), torch.zeros(2, dtype=torch.float64)])
        [48, 16]
    """
    return [p.numel() * p.element_size() for p in params]


def _broadcast_flat(tensors: Sequence[Tensor], group: dist.ProcessGroup) -> None:
    """Overwrite ``tensors`` with rank 0's values: one broadcast per (dtype, device)."""
    kinds: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        kinds.setdefault((t.dtype, t.device), []).append(t)
    src = dist.get_global_rank(group, 0)
    with torch.no_grad():
        for same in kinds.values():
            flat = torch.cat([t.detach().reshape(-1) for t in same])
            dist.broadcast(flat, src, group=group)
            for t, piece in zip(same, flat.split([t.numel() for t in same]), strict=True):
                t.detach().copy_(piece.view_as(t))


@dataclass
class _Flight:
    """One partition's all-reduces in flight: per (dtype, device), the flat buffer and work."""

    index: int
    parts: list[tuple[list[int], Tensor, Any]]
    record: dict[str, Any]


def _check_cover(partitions: list[list[int]], count: int) -> None:
    flat = sorted(i for part in partitions for i in part)
    if flat != list(range(count)) or any(not part for part in partitions):
        raise ValueError(
            f"partitions must hold each of the {count} dense parameter indices exactly once, "
            f"in non-empty lists (got {partitions}); build them with plan_partitions over "
            "dense_parameters(model)"
        )


class PartitionedDataParallel(nn.Module):
    """Data parallelism for the dense parameters, all-reduced in planned partitions.

    Like DistributedDataParallel: ``forward`` passes through to ``module`` (state-dict keys
    get the ``module.`` prefix); at construction the dense parameters and buffers are
    broadcast from rank 0; the gradients end up averaged over the ranks. Unlike DDP, the
    all-reduces follow ``partitions`` (lists of indices into :func:`dense_parameters`):
    partition k goes out (``async_op=True``, on its own process group) as soon as every
    one of its gradients is accumulated and partitions 0..k-1 have gone out (every rank
    issues them in the same order). At the end of the backward the averaged gradients are
    written back; :meth:`finish` does it explicitly (a no-op if already done).

    A parameter this rank did not use gets its partners' average (zeros counted for it);
    one no rank used keeps ``grad = None`` — DDP's ``find_unused_parameters`` behaviour.
    A partition holding a locally unused parameter waits for :meth:`finish`.

    Attributes:
        module: the wrapped model.
        dense_names: the dense parameters, in the order partitions index.
        partitions: the index lists, in issue order.
        timeline: the last synchronised step, one dict per partition: ``partition``,
            ``params``, ``nbytes``, ``ready_s`` (last gradient in; None when issued by
            ``finish`` with one missing), ``issued_s``, ``done_s`` (its wait returned),
            all ``time.perf_counter()`` seconds, and ``in_backward`` (issued by a
            gradient hook, not by ``finish``). On CUDA the times are host-side.

    Example:
        >>> import torch
        >>> from dynroute.layers import MoE
        >>> from dynroute.parallel import local_group, shard_model_experts
        >>> with local_group():
        ...     net = shard_model_experts(nn.Sequential(nn.Linear(8, 8), MoE(8, 16, 2)))
        ...     run = PartitionedDataParallel(net, [[0], [1, 2]])
        ...     run(torch.randn(4, 8))[0].sum().backward()
        ...     run.finish()
        >>> [(r["partition"], r["params"], r["in_backward"]) for r in run.timeline]
        [(0, 1, True), (1, 2, True)]
    """

    def __init__(
        self,
        module: nn.Module,
        partitions: Sequence[Partition | Sequence[int]],
        group: dist.ProcessGroup | None = None,
        broadcast_buffers: bool = True,
    ) -> None:
        super().__init__()
        require_group(None, "PartitionedDataParallel")
        self.module = module
        named = dense_parameters(module)
        self.dense_names = [name for name, _ in named]
        self._params = [p for _, p in named]
        self.partitions = [
            list(p.params) if isinstance(p, Partition) else [int(i) for i in p] for p in partitions
        ]
        _check_cover(self.partitions, len(self._params))
        self._partition_of = {i: k for k, part in enumerate(self.partitions) for i in part}
        self._layout = [self._same_kind(part) for part in self.partitions]
        # Own group: the partitions' asynchronous all-reduces must not queue behind (or in
        # front of) the experts' all-to-alls on theirs.
        self.group = group if group is not None else dist.new_group(timeout=timeout_from_env())
        self.world_size = dist.get_world_size(self.group)
        experts = set(expert_parameter_names(module))
        self._buffers_to_sync = (
            [b for n, b in module.named_buffers() if n not in experts] if broadcast_buffers else []
        )
        _broadcast_flat(self._params + self._buffers_to_sync, self.group)
        self._require_sync = True
        self._mode = "idle"  # idle: hooks ignored; open: a synced step; finished: reduced
        self._open_step()
        self._mode = "idle"
        self.timeline: list[dict[str, Any]] = []
        for index, p in enumerate(self._params):
            p.register_post_accumulate_grad_hook(lambda _, i=index: self._grad_ready(i))

    def _same_kind(self, part: list[int]) -> list[list[int]]:
        """A partition's indices split by (dtype, device): one flat buffer each."""
        kinds: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i in part:
            kinds.setdefault((self._params[i].dtype, self._params[i].device), []).append(i)
        return list(kinds.values())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._mode == "open" and (self._flights or any(self._seen)):
            raise RuntimeError(
                "PartitionedDataParallel: forward before the previous backward's gradients "
                "were reduced; call finish() after backward (before the next forward)"
            )
        if self._buffers_to_sync:
            _broadcast_flat(self._buffers_to_sync, self.group)
        if torch.is_grad_enabled() and self._require_sync:
            self._open_step()
        else:
            self._mode = "idle"
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Forward and backward inside accumulate gradients locally (no all-reduce); the
        next forward+backward outside reduces the sum, as DDP's ``no_sync``."""
        previous, self._require_sync = self._require_sync, False
        try:
            yield
        finally:
            self._require_sync = previous

    def _open_step(self) -> None:
        self._mode = "open"
        self._seen = [False] * len(self._params)
        self._missing = [len(part) for part in self.partitions]
        self._ready_s: list[float | None] = [None] * len(self.partitions)
        self._next = 0
        self._flights: list[_Flight] = []
        self._callback_queued = False
        self._finishing = False

    def _grad_ready(self, index: int) -> None:
        """Post-accumulate-grad hook of dense parameter ``index``."""
        if self._mode == "idle":
            return
        if self._mode == "finished" or self._seen[index]:
            raise RuntimeError(
                f"PartitionedDataParallel: the gradient of {self.dense_names[index]} arrived "
                "twice in one step (a second backward, or one after finish()); run the "
                "forward through the wrapper before each backward, and accumulate in no_sync()"
            )
        if not self._callback_queued:
            # Like DDP: reduce what is left and write back once the whole backward is done.
            torch.autograd.Variable._execution_engine.queue_callback(self.finish)
            self._callback_queued = True
        self._seen[index] = True
        k = self._partition_of[index]
        self._missing[k] -= 1
        if self._missing[k] == 0:
            self._ready_s[k] = time.perf_counter()
        while self._next < len(self.partitions) and self._missing[self._next] == 0:
            self._issue()

    def _issue(self) -> None:
        """Start partition ``self._next``'s all-reduce(s): gradients / W, then used flags."""
        k = self._next
        parts = []
        for indices in self._layout[k]:
            params = [self._params[i] for i in indices]
            grads = [p.grad for p in params]
            like = params[0]
            pieces = [
                g.reshape(-1) if g is not None else like.new_zeros(p.numel())
                for p, g in zip(params, grads, strict=True)
            ]
            used = torch.tensor([g is not None for g in grads], dtype=like.dtype)
            flat = torch.cat([*pieces, used.to(like.device)]).mul_(1.0 / self.world_size)
            work = dist.all_reduce(flat, group=self.group, async_op=True)
            parts.append((indices, flat, work))
        record = {
            "partition": k,
            "params": len(self.partitions[k]),
            "nbytes": sum(parameter_bytes([self._params[i] for i in self.partitions[k]])),
            "ready_s": self._ready_s[k],
            "issued_s": time.perf_counter(),
            "done_s": None,
            "in_backward": not self._finishing,
        }
        self._flights.append(_Flight(k, parts, record))
        self._next += 1

    def finish(self) -> None:
        """Issue the partitions still waiting, wait for all, write the averages to ``.grad``.

        Runs by itself at the end of each synchronised backward; call it (every rank)
        before clipping and the optimizer step so a rank whose backward reached no dense
        parameter still takes part. A no-op when the step is already finished.
        """
        if self._mode != "open":
            return
        self._finishing = True
        try:
            while self._next < len(self.partitions):
                self._issue()
            for flight in self._flights:
                for indices, flat, work in flight.parts:
                    work.wait()
                    self._write_back(indices, flat)
                flight.record["done_s"] = time.perf_counter()
        finally:
            self._mode = "finished"
            self._finishing = False
        self.timeline = [flight.record for flight in self._flights]
        self._flights = []

    def _write_back(self, indices: list[int], flat: Tensor) -> None:
        used = (flat[len(flat) - len(indices) :] > 0).tolist()
        offset = 0
        for i, anyone in zip(indices, used, strict=True):
            p = self._params[i]
            mean = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if p.grad is not None:
                p.grad.copy_(mean)
            elif anyone:  # unused here, used elsewhere: take the average (DDP does too)
                p.grad = mean.clone()


def wrap_partitioned(
    model: nn.Module,
    partitions: Sequence[Partition | Sequence[int]] | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    average_expert_grads: bool = True,
    group: dist.ProcessGroup | None = None,
) -> PartitionedDataParallel:
    """:func:`~dynroute.parallel.ddp.wrap_ddp` with planned partitions instead of DDP buckets.

    Expert tensors are left out (their gradients come from every rank through the
    all-to-all backward); with ``average_expert_grads`` they are divided by the world
    size, so every gradient is that of the mean of the ranks' losses, as with ``wrap_ddp``.

    Args:
        model: a model after ``shard_model_experts``.
        partitions: from :func:`plan_partitions` over ``dense_parameters(model)`` (or index
            lists); None: ``bucket_bytes`` buckets, the no-profile fallback.
        bucket_bytes: the fallback bucket size.
        average_expert_grads: scale expert gradients by 1 / world size.
        group: for the all-reduces (default: a new group of all ranks).

    Example::

        dense = dense_parameters(shard_model_experts(model, expert_group))
        plan = plan_partitions(parameter_bytes([p for _, p in dense]), gaps_s, fit)
        run = wrap_partitioned(model, plan)
    """
    require_group(None, "wrap_partitioned")
    names = expert_parameter_names(model)
    if not names:
        raise ValueError(
            "wrap_partitioned: the model has no ExpertParallelMoE; call shard_model_experts "
            "first (or PartitionedDataParallel directly for a model without experts)"
        )
    if average_expert_grads:
        average_expert_grads_over_ranks(model, names)
    if partitions is None:
        dense = [p for _, p in dense_parameters(model)]
        partitions = bucket_partitions(parameter_bytes(dense), bucket_bytes)
    return PartitionedDataParallel(model, partitions, group)
