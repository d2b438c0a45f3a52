"""``offload_experts``: run a model with its experts in a store and a fixed pool of slots.

Every MoE layer's experts move to a store (host memory, or safetensors files on disk);
the layer computes each expert its tokens chose from a slot of one shared
:class:`~dynroute.offload.pool.SlotPool` (a miss loads it first). The hook sits at the
expert seam, so routing, dispatch and combine are those of the resident model and the
outputs are the same (each chosen expert runs the same math on the same rows):

- a DynMoE ``MoE`` gets an :class:`OffloadedExperts` module in place of its experts;
- a ``dynroute.hf`` ``DynamicMoEBlock`` gets it as ``offloaded_experts`` (its own
  ``experts`` keep their shapes with no memory behind them).

With a prefetching policy (``pregate``), each layer applies the *next* layer's gate and
router to its own input and starts loading the experts they pick on a worker thread
while this layer computes (Pre-gated MoE; MoE-Infinity / ProMoE's prefetch).

Example:
    >>> import torch
    >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
    >>> torch.manual_seed(0) and None
    >>> model = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=2,
    ...     n_heads=2, d_ff=32, num_experts=8)).eval()
    >>> ids = torch.randint(0, 32, (1, 6))
    >>> before = model(ids).logits
    >>> off = offload_experts(model, budget="25%", policy="lru")
    >>> torch.allclose(model(ids).logits, before, atol=1e-6), off.pool.cache.capacity
    (True, 4)
    >>> off.summary()["tokens"]
    6
    >>> off.close()
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynroute.layers.experts import Experts
from dynroute.offload.adapters import OffloadLayer, moe_layers
from dynroute.offload.budget import slots_for_budget
from dynroute.offload.policies import POLICIES, CachePolicy, Key
from dynroute.offload.pool import SlotPool
from dynroute.offload.store import DiskStore, ExpertStore, HostStore

__all__ = ["Offload", "OffloadedExperts", "format_bytes", "offload_experts"]


def format_bytes(n: float) -> str:
    """``1.5 MB``-style (decimal units).

    Example:
        >>> format_bytes(1_500_000), format_bytes(512)
        ('1.5 MB', '512 B')
    """
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


class OffloadedExperts(Experts):
    """A layer's experts run from the slot pool: ``forward(rows, offsets)`` like any kind.

    Only the experts with rows are fetched; each runs ``layer.compute`` on its rows.
    """

    stacked = False

    def __init__(self, runtime: Offload, layer: OffloadLayer) -> None:
        super().__init__(layer.num_experts, layer.d_model)
        self._runtime = (runtime,)  # in a tuple: not a submodule
        self.layer_index = layer.index
        self.compute = layer.compute
        self._dtype = layer.dtype
        #: the layer's own experts module, hollow (shapes and parameter counts, no memory)
        self.shapes: nn.Module | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def runtime(self) -> Offload:
        """The :class:`Offload` this layer belongs to."""
        return self._runtime[0]

    def forward(self, rows: Tensor, offsets: Tensor) -> Tensor:
        runtime = self._runtime[0]
        ends = offsets.tolist()
        spans = [
            (e, s, t) for e, (s, t) in enumerate(zip([0, *ends[:-1]], ends, strict=True)) if t > s
        ]
        runtime.prefetch_next(self.layer_index, [e for e, _, _ in spans])
        out = rows.new_empty(rows.shape[0], self.d_out)
        for e, s, t in spans:
            out[s:t] = self.compute(runtime.pool.get((self.layer_index, e)), rows[s:t])
        return out

    def run_expert(self, rows: Tensor, e: int) -> Tensor:
        return self.compute(self._runtime[0].pool.get((self.layer_index, e)), rows)

    def extra_repr(self) -> str:
        return f"layer={self.layer_index}, {super().extra_repr()}"


class Offload:
    """An offloaded model's runtime: its pool, its layers, and what they moved.

    Built by :func:`offload_experts`; ``summary()`` and ``summary_line()`` report it.
    """

    def __init__(self, layers: list[OffloadLayer], pool: SlotPool, policy: str) -> None:
        self.layers, self.pool, self.policy = layers, pool, policy
        self.inputs: dict[int, Tensor] = {}
        self.tokens = 0
        self.expert_bytes = layers[0].expert_bytes()
        self.total_experts = sum(layer.num_experts for layer in layers)
        self.hooks: list[Any] = []
        #: the store's folder when offload_experts made it (``store="disk"``), else None
        self.temporary: Path | None = None

    def remember_input(self, index: int, x: Tensor) -> None:
        if index == 0:
            self.tokens += x.numel() // x.shape[-1]
        if self.pool.cache.policy.prefetch:
            self.inputs[index] = x.reshape(-1, x.shape[-1])

    @torch.no_grad()
    def prefetch_next(self, index: int, used: list[int]) -> None:
        """Pre-gating: start loading what the next layer's gate picks for this layer's input."""
        x = self.inputs.pop(index, None)
        if x is None or index + 1 >= len(self.layers):
            return
        routing = self.layers[index + 1].route(x)
        predicted = [(index + 1, int(e)) for e in routing.expert.unique().tolist()]
        self.pool.prefetch(predicted, protect=[(index, e) for e in used])

    def summary(self) -> dict[str, Any]:
        """hit_rate, bytes_per_token, bytes_moved, tokens, slots, ... (JSON-ready)."""
        stats = self.pool.cache.stats()
        return {
            "policy": self.policy,
            "slots": self.pool.cache.capacity,
            "total_experts": self.total_experts,
            "resident_share": self.pool.cache.capacity / self.total_experts,
            "slot_bytes": self.pool.slot_bytes,
            "expert_bytes": self.expert_bytes,
            **stats,
            "bytes_moved": self.pool.bytes_moved,
            "tokens": self.tokens,
            "bytes_per_token": self.pool.bytes_moved / self.tokens if self.tokens else 0.0,
            "load_seconds": self.pool.load_seconds,
        }

    def summary_line(self) -> str:
        """One line: policy, slots, hit rate, bytes moved (total and per token)."""
        s = self.summary()
        return (
            f"expert offload ({s['policy']}): {s['slots']}/{s['total_experts']} experts resident "
            f"({format_bytes(s['slot_bytes'])}); hit rate {s['hit_rate']:.1%}, "
            f"moved {format_bytes(s['bytes_moved'])} ({format_bytes(s['bytes_per_token'])}/token)"
        )

    def close(self) -> None:
        """Finish pending prefetches, stop the worker, close the store (and delete it when
        ``offload_experts`` made it in a temporary folder): the model cannot run after."""
        self.pool.close()
        self.pool.store.close()
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)


def build_policy(policy: str | CachePolicy) -> tuple[CachePolicy, str]:
    if isinstance(policy, CachePolicy):
        return policy, type(policy).name or type(policy).__name__
    return POLICIES.build(policy), str(policy)


def write_store(
    layers: list[OffloadLayer], store: str | Path | ExpertStore, cold: bool
) -> ExpertStore:
    """Move every layer's experts into ``store`` ("host", a folder, or a store)."""
    if isinstance(store, ExpertStore):
        return store
    if store == "host":
        return HostStore(
            {
                (lay.index, e): lay.expert_tensors(e)
                for lay in layers
                for e in range(lay.num_experts)
            }
        )
    folder = Path(tempfile.mkdtemp(prefix="dynroute-experts-") if store == "disk" else store)
    for lay in layers:  # one layer at a time: never a second copy of the whole model
        experts = {(lay.index, e): lay.expert_tensors(e) for e in range(lay.num_experts)}
        DiskStore.write(folder, experts).close()
    return DiskStore(folder, cold=cold)


def install(runtime: Offload, layer: OffloadLayer) -> None:
    """Swap ``layer``'s experts for offloaded ones and drop the resident weights."""
    offloaded = OffloadedExperts(runtime, layer)
    module = layer.module
    if hasattr(module, "offloaded_experts"):  # a dynroute.hf block
        module.offloaded_experts = offloaded
        hollow(module.experts)
    else:  # a DynMoE layer: the old experts stay inside, hollow, so parameter counts hold
        offloaded.shapes = hollow(module.experts)
        module.experts = offloaded

    def remember(_module: nn.Module, args: tuple[Any, ...]) -> None:
        runtime.remember_input(layer.index, args[0])

    runtime.hooks.append(module.register_forward_pre_hook(remember))
    layer.expert_tensors = offloaded_tensors


def hollow(module: nn.Module) -> nn.Module:
    """``module`` with every parameter replaced by one of the same shape and dtype and no
    memory behind it (a zero expanded to the shape): what counts parameters or reads
    shapes still works; the weights are in the store. Saving such a model saves zeros."""
    for name, p in list(module.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        empty = torch.zeros((), dtype=p.dtype, device=p.device).expand(p.shape)
        setattr(module.get_submodule(owner), leaf, nn.Parameter(empty, requires_grad=False))
    return module


def offloaded_tensors(e: int) -> dict[str, Tensor]:
    raise RuntimeError("offload: this layer's experts live in the store now")


def offload_experts(
    model: nn.Module,
    budget: str | float | int = "50%",
    policy: str | CachePolicy = "pregate",
    store: str | Path | ExpertStore = "host",
    cold: bool = False,
    template_device: str | torch.device | None = None,
) -> Offload:
    """Keep ``model``'s experts in ``store`` and a pool of slots worth ``budget``; in place.

    Args:
        model: a DynMoE model or a transformers MoE adapted by ``dynroute.hf``.
        budget: a share of the experts (``"50%"``, ``0.5``) or a size (``"2GB"``, bytes).
        policy: a registered cache policy (``lru``, ``lfu``, ``reuse``, ``pregate``,
            ``belady`` with ``set_future``) or a :class:`CachePolicy`.
        store: ``"host"`` (host memory), ``"disk"`` (a new temporary folder), a folder
            to write safetensors files into, or an :class:`ExpertStore`.
        cold: a disk store drops what it read from the OS page cache (every miss reads
            the disk).
        template_device: where the slots live (default: the experts' device).

    Returns:
        the :class:`Offload` runtime (``summary()``, ``summary_line()``, ``close()``).

    Raises:
        dynroute.offload.budget.BudgetError: a budget of 0, more than the experts, or
            not a size.
    """
    layers = moe_layers(model)
    first = layers[0].expert_tensors(0)
    shapes = {n: t.shape for n, t in first.items()}
    for lay in layers[1:]:
        if {n: t.shape for n, t in lay.expert_tensors(0).items()} != shapes:
            raise NotImplementedError("offload: MoE layers with experts of different shapes")
    expert_bytes = layers[0].expert_bytes()
    slots = slots_for_budget(budget, sum(lay.num_experts for lay in layers), expert_bytes)
    cache_policy, name = build_policy(policy)
    device = template_device or next(iter(first.values())).device
    template: Mapping[str, Tensor] = {
        n: torch.empty(t.shape, dtype=t.dtype, device=device) for n, t in first.items()
    }
    del first
    expert_store = write_store(layers, store, cold)
    runtime = Offload(layers, SlotPool(slots, cache_policy, expert_store, template), name)
    if store == "disk" and isinstance(expert_store, DiskStore):
        runtime.temporary = expert_store.folder
    for lay in layers:
        install(runtime, lay)
    return runtime


def resident_keys(runtime: Offload) -> list[Key]:
    """The experts in the slots now (sorted)."""
    return sorted(runtime.pool.cache.resident)
