"""Expert offloading: run MoE models whose experts do not fit in fast memory.

Experts live in a store (host memory, or safetensors files read on demand); a fixed pool
of expert slots holds the ones in use, managed by a cache policy (LRU, LFU, routing-aware
reuse, pre-gating prefetch; Belady's optimum on a recorded trace as the limit). A trace
simulator replays recorded routing through every policy and cache size.

- :func:`offload_experts` (``runtime.py``): offload a DynMoE model or a ``dynroute.hf``
  adapted transformers MoE in place; outputs equal the resident model's.
- :data:`POLICIES` (``policies.py``): the cache policies, ``register_policy`` for more.
- :func:`record_trace`, :func:`simulate`, :func:`sweep` (``trace.py``, ``simulate.py``).
- ``--expert-memory`` budgets: :func:`slots_for_budget` (``budget.py``).

See docs/offload.md.
"""

from dynroute.offload.adapters import OffloadLayer, moe_layers
from dynroute.offload.budget import FLAG, BudgetError, parse_budget, slots_for_budget
from dynroute.offload.cache import ExpertCache
from dynroute.offload.policies import POLICIES, CachePolicy, Key, register_policy
from dynroute.offload.pool import SlotPool
from dynroute.offload.runtime import Offload, OffloadedExperts, format_bytes, offload_experts
from dynroute.offload.simulate import demand, prefetch_quality, simulate, sweep
from dynroute.offload.store import DiskStore, ExpertStore, HostStore, drop_page_cache
from dynroute.offload.trace import RoutingTrace, TraceRecorder, record_trace

__all__ = [
    "FLAG",
    "POLICIES",
    "BudgetError",
    "CachePolicy",
    "DiskStore",
    "ExpertCache",
    "ExpertStore",
    "HostStore",
    "Key",
    "Offload",
    "OffloadLayer",
    "OffloadedExperts",
    "RoutingTrace",
    "SlotPool",
    "TraceRecorder",
    "demand",
    "drop_page_cache",
    "format_bytes",
    "moe_layers",
    "offload_experts",
    "parse_budget",
    "prefetch_quality",
    "record_trace",
    "register_policy",
    "simulate",
    "slots_for_budget",
    "sweep",
]
