"""Which experts are resident: a fixed number of slots, a policy, hit and load counts.

Bookkeeping only (no tensors): the runtime's :class:`~dynroute.offload.pool.SlotPool`
and the trace simulator (:mod:`dynroute.offload.simulate`) drive the same object, so a
replayed trace and a real run make the same decisions.

Example:
    >>> from dynroute.offload.policies import POLICIES
    >>> cache = ExpertCache(2, POLICIES.build("lru"))
    >>> [cache.access(k)[0] for k in [(0, 1), (0, 2), (0, 1), (0, 3), (0, 2)]]
    [False, False, True, False, False]
    >>> cache.hits, cache.misses, sorted(cache.resident)
    (1, 4, [(0, 2), (0, 3)])
"""

from __future__ import annotations

from collections.abc import Iterable

from dynroute.offload.policies import CachePolicy, Key

__all__ = ["ExpertCache"]


class ExpertCache:
    """At most ``capacity`` resident experts, evicted by ``policy``.

    Attributes:
        resident: the keys in the slots (prefetched ones included).
        clock: demand accesses so far.
        hits, misses: demand accesses that found / did not find their expert.
        prefetched: experts loaded by prefetch; prefetch_used: those used before eviction.
    """

    def __init__(self, capacity: int, policy: CachePolicy) -> None:
        if capacity < 1:
            raise ValueError(f"ExpertCache: capacity must be at least 1 slot, got {capacity}")
        self.capacity, self.policy = capacity, policy
        self.resident: set[Key] = set()
        self.unused_prefetch: set[Key] = set()
        self.clock = self.hits = self.misses = self.prefetched = self.prefetch_used = 0

    @property
    def loads(self) -> int:
        """Experts moved into a slot (misses and prefetches)."""
        return self.misses + self.prefetched

    def access(self, key: Key) -> tuple[bool, list[Key]]:
        """A demand use of ``key``: (hit, evicted keys)."""
        evicted: list[Key] = []
        hit = key in self.resident
        if hit:
            self.hits += 1
            if key in self.unused_prefetch:
                self.unused_prefetch.discard(key)
                self.prefetch_used += 1
        else:
            self.misses += 1
            evicted = self.make_room(1, {key})
            self.resident.add(key)
            self.policy.insert(key, self.clock)
        self.policy.touch(key, self.clock)
        self.clock += 1
        return hit, evicted

    def prefetch(
        self, keys: Iterable[Key], protect: Iterable[Key] = ()
    ) -> tuple[list[Key], list[Key]]:
        """Bring ``keys`` in ahead of use, never evicting ``protect``: (inserted, evicted)."""
        keep = set(protect)
        inserted: list[Key] = []
        evicted: list[Key] = []
        for key in keys:
            if key in self.resident:
                continue
            out = self.make_room(1, keep | set(inserted) | {key})
            if len(self.resident) >= self.capacity:
                break  # every resident expert is protected: no room
            evicted += out
            self.resident.add(key)
            self.unused_prefetch.add(key)
            self.policy.insert(key, self.clock)
            self.prefetched += 1
            inserted.append(key)
        return inserted, evicted

    def make_room(self, need: int, protect: set[Key]) -> list[Key]:
        """Evict until ``need`` slots are free (or only ``protect`` is left)."""
        evicted: list[Key] = []
        while len(self.resident) + need > self.capacity:
            candidates = self.resident - protect
            if not candidates:
                break
            victim = self.policy.victim(candidates, self.clock)
            self.resident.discard(victim)
            self.unused_prefetch.discard(victim)
            self.policy.remove(victim)
            evicted.append(victim)
        return evicted

    def stats(self) -> dict[str, float | int]:
        """hits, misses, loads, hit_rate, prefetch precision (prefetched experts used)."""
        total = self.hits + self.misses
        return {
            "accesses": total,
            "hits": self.hits,
            "misses": self.misses,
            "prefetched": self.prefetched,
            "loads": self.loads,
            "hit_rate": self.hits / total if total else float("nan"),
            "prefetch_used": self.prefetch_used / self.prefetched
            if self.prefetched
            else float("nan"),
        }
