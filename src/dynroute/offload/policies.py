"""Cache policies for expert slots: which resident expert leaves when a new one comes in.

One small interface (:class:`CachePolicy`), registered by name in :data:`POLICIES`:

- ``lru``: evict the expert used longest ago;
- ``lfu``: evict the expert used least often (ties: longest ago);
- ``reuse``: routing-aware: evict the expert with the lowest predicted reuse, an
  exponentially decayed use count per expert (recent *and* frequent experts stay; an
  expert every token of a stretch picks outlives one a single token picked);
- ``pregate``: pre-gating prefetch: the runtime applies the next MoE layer's gate to the
  current hidden state and loads the experts it predicts while this layer computes
  (``prefetch = True``); evicts as ``reuse``;
- ``belady``: the optimal offline policy on a recorded trace (evict the expert whose next
  use is farthest away): the limit every policy is compared to; needs ``future``.

A key is ``(layer, expert)``; ``clock`` counts demand accesses.

Example:
    >>> p = POLICIES.build("lru")
    >>> for t, key in enumerate([(0, 1), (0, 2), (0, 1)]):
    ...     p.touch(key, t)
    >>> p.victim([(0, 1), (0, 2)], 3)
    (0, 2)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import ClassVar

from dynroute.common.registry import Registry

__all__ = ["POLICIES", "CachePolicy", "Key", "register_policy"]

#: (MoE layer index, expert index)
Key = tuple[int, int]


class CachePolicy:
    """Base class: a policy sees every use and insert, and names a victim among candidates.

    Attributes:
        prefetch: whether the runtime should pre-gate and prefetch the next layer's experts.
        name: the registered name.
    """

    prefetch: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def touch(self, key: Key, clock: int) -> None:
        """``key`` was used (a hit, or just loaded on a miss) at demand access ``clock``."""

    def insert(self, key: Key, clock: int) -> None:
        """``key`` entered the cache (loaded on a miss or prefetched)."""

    def remove(self, key: Key) -> None:
        """``key`` left the cache."""

    def victim(self, candidates: Iterable[Key], clock: int) -> Key:
        """The candidate to evict (``candidates`` is never empty)."""
        raise NotImplementedError

    def set_future(self, future: Sequence[Key]) -> None:
        """The whole demand sequence ahead (only offline policies use it)."""


POLICIES: Registry[CachePolicy] = Registry(
    "cache policy", CachePolicy, package="dynroute.offload", example="lru"
)
register_policy = POLICIES.register


@register_policy("lru")
class LRU(CachePolicy):
    """Least recently used."""

    def __init__(self) -> None:
        self.last: dict[Key, float] = {}

    def touch(self, key: Key, clock: int) -> None:
        self.last[key] = clock

    def insert(self, key: Key, clock: int) -> None:
        # a prefetched expert counts as used just before now: it goes before the
        # experts the current token really used
        self.last.setdefault(key, clock - 0.5)

    def remove(self, key: Key) -> None:
        self.last.pop(key, None)

    def victim(self, candidates: Iterable[Key], clock: int) -> Key:
        return min(candidates, key=lambda k: (self.last.get(k, -1.0), k))


@register_policy("lfu")
class LFU(LRU):
    """Least frequently used (counts kept across evictions); ties go to LRU."""

    def __init__(self) -> None:
        super().__init__()
        self.uses: dict[Key, int] = {}

    def touch(self, key: Key, clock: int) -> None:
        super().touch(key, clock)
        self.uses[key] = self.uses.get(key, 0) + 1

    def victim(self, candidates: Iterable[Key], clock: int) -> Key:
        return min(candidates, key=lambda k: (self.uses.get(k, 0), self.last.get(k, -1.0), k))


@register_policy("reuse")
class Reuse(LRU):
    """Routing-aware: keep experts by predicted reuse, a decayed use count.

    score(k) = Σ over past uses u of k of ``decay ** (clock - u)``; kept lazily as
    (score at last update, clock of last update).

    Args:
        half_life: demand accesses after which a use weighs half.
    """

    def __init__(self, half_life: float = 64.0) -> None:
        super().__init__()
        self.decay = 0.5 ** (1.0 / half_life)
        self.score: dict[Key, tuple[float, int]] = {}

    def value(self, key: Key, clock: int) -> float:
        """Predicted reuse of ``key`` at ``clock``."""
        s, at = self.score.get(key, (0.0, clock))
        return s * self.decay ** (clock - at)

    def touch(self, key: Key, clock: int) -> None:
        super().touch(key, clock)
        self.score[key] = (self.value(key, clock) + 1.0, clock)

    def victim(self, candidates: Iterable[Key], clock: int) -> Key:
        return min(candidates, key=lambda k: (self.value(k, clock), self.last.get(k, -1.0), k))


@register_policy("pregate")
class PreGate(Reuse):
    """Pre-gating prefetch of the next layer's predicted experts, evicting by predicted
    reuse (as ``reuse``).

    Measured on recorded traces (benchmarks/offload.py), prefetching into an LRU cache
    loses to plain LRU at small budgets: LRU's victim is the expert used longest ago,
    which, layers running in a cycle, belongs to the layers about to run, and a
    mispredicted prefetch (precision 0.5–0.7) evicts experts those layers reuse. Evicting
    by decayed use count keeps the reused experts and lets one-off prefetches go first.
    """

    prefetch = True


@register_policy("belady")
class Belady(LRU):
    """Belady's MIN: evict the expert used farthest in the future (never again: first)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[Key, list[int]] = {}

    def set_future(self, future: Sequence[Key]) -> None:
        self.times = {}
        for t, key in enumerate(future):
            self.times.setdefault(key, []).append(t)

    def next_use(self, key: Key, clock: int) -> float:
        """The first demand access of ``key`` at or after ``clock`` (inf: none)."""
        times = self.times.get(key, [])
        i = bisect.bisect_left(times, clock)
        return times[i] if i < len(times) else float("inf")

    def victim(self, candidates: Iterable[Key], clock: int) -> Key:
        return max(candidates, key=lambda k: (self.next_use(k, clock), k))
