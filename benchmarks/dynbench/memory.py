"""Peak tensor memory of a call, on any device: a tracemalloc for torch tensors.

A ``TorchDispatchMode`` sees every tensor an op returns, forward and backward. Each new
storage is counted until it is freed (checked through a weak reference before every
new allocation), so the peak is exact at op granularity. Tensors that existed before
the call (inputs, parameters) are not counted.

Parameter gradients are reported apart: every implementation of an MoE layer must
write a gradient as large as its expert weights (E experts for a layer, one for the
dense bound), so comparing activation memory means leaving them out.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef

# Private, but torch has no public way to see every tensor an op allocates on any device
# (torch.cuda.max_memory_allocated is CUDA-only; the profiler gives no storage identity to
# leave the parameter gradients out). It is why this module lives in benchmarks/, not in
# the installed package.
from torch.utils._python_dispatch import TorchDispatchMode


@dataclass(frozen=True)
class PeakMemory:
    """Peak bytes of tensors allocated during a call.

    Attributes:
        total: peak of everything allocated during the call.
        activations: peak leaving out the final gradients of the given parameters.
    """

    total: int
    activations: int


class _Tracker(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int, int]] = {}  # storage ptr -> (ref, id, size)
        self.events: list[tuple[int, int]] = []  # (allocation id, +bytes / -bytes)
        self.ptr_of: dict[int, int] = {}  # allocation id -> data ptr
        self._ids = itertools.count()

    def purge(self) -> None:
        for ptr, (ref, aid, size) in list(self.live.items()):
            if ref.expired():
                del self.live[ptr]
                self.events.append((aid, -size))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.purge()
        # views and in-place results share an input's storage: not a new allocation
        inputs = {_ptr(t) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            if t.layout == torch.strided and not t.is_meta:
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr in self.live or ptr in inputs or storage.nbytes() == 0:
                    continue
                aid = next(self._ids)
                self.live[ptr] = (StorageWeakRef(storage), aid, storage.nbytes())
                self.ptr_of[aid] = ptr
                self.events.append((aid, storage.nbytes()))
        return out


def _tensors(tree: object) -> Iterator[Tensor]:
    """The tensors in an op's arguments or results (nested tuples, lists, dicts).

    Example:
        >>> len(list(_tensors(((torch.ones(1), 2), {"out": [torch.ones(2)]}))))
        2
    """
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, tuple | list):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def _ptr(t: Tensor) -> int | None:
    return t.untyped_storage().data_ptr() if t.layout == torch.strided else None


def _peak(events: list[tuple[int, int]], skip: set[int]) -> int:
    current = peak = 0
    for aid, delta in events:
        if aid not in skip:
            current += delta
            peak = max(peak, current)
    return peak


def peak_memory(fn: Callable[[], object], params: Iterable[Tensor] = ()) -> PeakMemory:
    """Run ``fn()`` once and return the peak bytes of the tensors it allocated.

    Args:
        fn: the call to measure (e.g. forward + backward).
        params: tensors whose ``.grad`` after the call is left out of ``activations``.

    Example:
        >>> import torch
        >>> peak_memory(lambda: torch.ones(256) + 1).total  # two float32 [256] tensors
        2048
        >>> w = torch.ones(256, requires_grad=True)
        >>> m = peak_memory(lambda: (w * 2).sum().backward(), [w])
        >>> m.activations < m.total
        True
    """
    tracker = _Tracker()
    with tracker:
        fn()
    tracker.purge()
    grad_ptrs = {p.grad.untyped_storage().data_ptr() for p in params if p.grad is not None}
    alive = {aid for _, aid, _ in tracker.live.values()}
    skip = {aid for aid in alive if tracker.ptr_of[aid] in grad_ptrs}
    return PeakMemory(_peak(tracker.events, set()), _peak(tracker.events, skip))
