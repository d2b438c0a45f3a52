"""The fixed pool of expert slots in fast memory, filled from a store on demand.

``capacity`` slots are allocated once (a dict of tensors each, shaped like one expert);
:class:`~dynroute.offload.cache.ExpertCache` decides what is resident; a miss copies the
expert from the store into a free slot; a prefetch does the same on a background thread
(a side stream's job on a GPU). Bookkeeping runs on the calling thread only; the worker
only copies bytes, so the decisions are those the trace simulator replays.

Example:
    >>> import torch
    >>> from dynroute.offload.policies import POLICIES
    >>> from dynroute.offload.store import HostStore
    >>> store = HostStore({(0, e): {"w": torch.full((2,), float(e))} for e in range(3)})
    >>> pool = SlotPool(2, POLICIES.build("lru"), store, {"w": torch.empty(2)})
    >>> pool.get((0, 2))["w"].tolist(), pool.bytes_moved
    ([2.0, 2.0], 8)
    >>> pool.close()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from torch import Tensor

from dynroute.offload.cache import ExpertCache
from dynroute.offload.policies import CachePolicy, Key
from dynroute.offload.store import ExpertStore

__all__ = ["SlotPool"]


class SlotPool:
    """``capacity`` expert slots shaped like ``template``, loaded from ``store``.

    Attributes:
        cache: the residency bookkeeping (hits, misses, prefetches).
        bytes_moved: bytes copied from the store (misses and prefetches).
        load_seconds: time the calling thread waited for loads (misses, unfinished prefetches).
    """

    def __init__(
        self,
        capacity: int,
        policy: CachePolicy,
        store: ExpertStore,
        template: Mapping[str, Tensor],
    ) -> None:
        self.cache = ExpertCache(capacity, policy)
        self.store = store
        self.slots = [
            {n: t.new_empty(t.shape) for n, t in template.items()} for _ in range(capacity)
        ]
        self.free = list(range(capacity))
        self.where: dict[Key, int] = {}
        self.pending: dict[Key, Future[int]] = {}
        self.lock = threading.Lock()
        self.bytes_moved = 0
        self.load_seconds = 0.0
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="dynroute-prefetch")

    @property
    def slot_bytes(self) -> int:
        """Bytes of all slots together (the budget in use)."""
        return sum(t.numel() * t.element_size() for slot in self.slots for t in slot.values())

    def release(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.wait(key)
            self.free.append(self.where.pop(key))

    def wait(self, key: Key) -> None:
        """Block until a prefetch of ``key`` (if any) has landed."""
        future = self.pending.pop(key, None)
        if future is not None:
            start = time.perf_counter()
            self.count(future.result())
            self.load_seconds += time.perf_counter() - start

    def count(self, moved: int) -> None:
        with self.lock:
            self.bytes_moved += moved

    def get(self, key: Key) -> dict[str, Tensor]:
        """The slot holding expert ``key``, loading it on a miss (a demand access)."""
        hit, evicted = self.cache.access(key)
        self.release(evicted)
        if hit:
            self.wait(key)
            return self.slots[self.where[key]]
        slot = self.free.pop()
        self.where[key] = slot
        start = time.perf_counter()
        self.count(self.store.read_into(key, self.slots[slot]))
        self.load_seconds += time.perf_counter() - start
        return self.slots[slot]

    def prefetch(self, keys: Iterable[Key], protect: Iterable[Key] = ()) -> list[Key]:
        """Start loading ``keys`` in the background (never evicting ``protect``)."""
        inserted, evicted = self.cache.prefetch(keys, protect)
        self.release(evicted)
        for key in inserted:
            slot = self.free.pop()
            self.where[key] = slot
            self.pending[key] = self.worker.submit(self.store.read_into, key, self.slots[slot])
        return inserted

    def close(self) -> None:
        """Finish pending loads and stop the worker thread."""
        for key in list(self.pending):
            self.wait(key)
        self.worker.shutdown(wait=True)
