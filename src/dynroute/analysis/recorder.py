"""Record every MoE layer's routing into fixed-size streaming counts.

The recorder never keeps a Routing past the batch it came from: each call adds to
per-layer histograms and count tables (see :class:`LayerCounts`), so memory stays
bounded however much text is analysed. Only the (token id, expert) pair table grows,
and only with the number of distinct pairs seen (at most vocabulary x experts).

Three ways in:

* ``recorder.attach_model(model)`` hooks every ``dynroute.layers.MoE`` (their forward
  returns ``(y, aux)`` with ``aux.routing``) and every ``dynroute.hf`` adapted block
  (through its ``routing_callback``), numbering layers in module order;
* ``recorder.attach(module, layer)`` hooks any module whose output contains a
  ``Routing`` (directly, in a tuple, or as an ``.routing`` attribute) and subscribes
  it to :func:`publish_routing`, which adapters of foreign models (transformers MoE
  blocks return router logits, not a Routing) call from their forward;
* ``recorder.record(layer, routing)`` directly.

Per batch: ``begin_batch(input_ids [B, T])`` → model forward (hooks fire) →
``end_batch(token_loss [B, T])``; the loss is only known after the forward, so each
layer's experts-per-token of the current batch are held until then.
"""

from __future__ import annotations

import math
import re
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dynroute.analysis.consistency import segment_accumulators
from dynroute.analysis.stats import capacity_drops, router_entropy
from dynroute.routing import Routing

__all__ = [
    "LayerCounts",
    "RecorderConfig",
    "RoutingRecorder",
    "find_routing",
    "publish_routing",
]

# The recorders a module publishes to live on the module itself (a plain attribute: not
# a parameter, buffer or submodule, so state_dict and .to() never see it).
_SUBSCRIBERS = "_routing_subscribers"


@dataclass(frozen=True)
class RecorderConfig:
    """What the recorder counts.

    Attributes:
        segment_lengths: window lengths S for the local-consistency (SCH/SRP) counts.
        capacity_factor: if set, count the assignments a per-sequence expert capacity of
            ``ceil(cf * assignments / E)`` would drop, by position.
        loss_bin_width, max_loss: token losses are binned this finely (nats) for the
            streaming Spearman correlation and the difficulty curve.
        entropy_bins: bins of normalized router entropy ``H / log(#choices)`` in [0, 1].
        shuffle_seed: seed of the within-batch token-id shuffle that gives the
            token-blind baseline of the token-id consistency.
    """

    segment_lengths: tuple[int, ...] = (4, 16, 64)
    capacity_factor: float | None = 1.25
    loss_bin_width: float = 0.02
    max_loss: float = 20.0
    entropy_bins: int = 100
    shuffle_seed: int = 0

    @property
    def loss_bins(self) -> int:
        """Number of loss bins (the last one collects everything above ``max_loss``)."""
        return math.ceil(self.max_loss / self.loss_bin_width) + 1


def grow(t: Tensor, size: int) -> Tensor:
    """Zero-pad a 1-D count tensor to at least ``size`` entries."""
    return t if t.numel() >= size else torch.cat([t, t.new_zeros(size - t.numel())])


def _grow2(t: Tensor, cols: int) -> Tensor:
    """Zero-pad a 2-D count table to at least ``cols`` columns."""
    if t.shape[1] >= cols:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], cols - t.shape[1])], dim=1)


class PairCounts:
    """Sparse counts of (token id, expert) pairs, merged batch by batch.

    New batches are buffered and merged into the sorted table once the buffer is as big
    as the table (or 64k pairs), so a long run sorts O(log) times per pair, not once per
    batch.

    Example:
        >>> import torch
        >>> pc = PairCounts(num_experts=2)
        >>> pc.add(torch.tensor([5, 5, 7]), torch.tensor([1, 1, 0]))
        >>> [t.tolist() for t in pc.pairs()]
        [[5, 7], [1, 0], [2, 1]]
    """

    MIN_BUFFER = 65_536

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts
        self.keys = torch.zeros(0, dtype=torch.long)
        self.counts = torch.zeros(0, dtype=torch.long)
        self._buffer: list[Tensor] = []
        self._buffered = 0

    def add(self, token: Tensor, expert: Tensor) -> None:
        """Count the pairs ``(token[i], expert[i])`` (LongTensors [A])."""
        self._buffer.append(token * self.num_experts + expert)
        self._buffered += token.numel()
        if self._buffered >= max(self.keys.numel(), self.MIN_BUFFER):
            self._merge()

    def _merge(self) -> None:
        if not self._buffer:
            return
        new_keys, new_counts = torch.unique(torch.cat(self._buffer), return_counts=True)
        self._buffer, self._buffered = [], 0
        keys, inverse = torch.unique(torch.cat([self.keys, new_keys]), return_inverse=True)
        counts = torch.zeros_like(keys)
        counts.scatter_add_(0, inverse, torch.cat([self.counts, new_counts]))
        self.keys, self.counts = keys, counts

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """LongTensors [P]: token id, expert and count of every observed pair."""
        self._merge()
        return self.keys // self.num_experts, self.keys % self.num_experts, self.counts


@dataclass
class LayerCounts:
    """Streaming counts of one layer; every field only ever grows by addition.

    Attributes:
        num_experts: E.
        experts_hist: [E + 1] tokens that ran 0..E experts.
        expert_tokens: [E] tokens per expert (load).
        loss_experts: [loss bins, E + 1] joint counts of token loss bin and experts.
        entropy_experts: [entropy bins, E + 1] joint counts of router entropy bin and experts.
        pos_tokens, pos_assignments, pos_dropped: [T] per position in the sequence.
        seg_sorted: S -> [E] window counts sorted descending, summed over windows.
        seg_hist: S -> [S + 1] histogram of per-(window, expert) counts.
        pairs, shuffled_pairs: (token id, expert) counts, real and with token ids
            shuffled within the batch (the token-blind baseline); expert E stands for
            "no expert" (tokens a null-expert router skips).
    """

    num_experts: int
    config: RecorderConfig
    experts_hist: Tensor = field(init=False)
    expert_tokens: Tensor = field(init=False)
    loss_experts: Tensor = field(init=False)
    entropy_experts: Tensor = field(init=False)
    pos_tokens: Tensor = field(init=False)
    pos_assignments: Tensor = field(init=False)
    pos_dropped: Tensor = field(init=False)
    seg_sorted: dict[int, Tensor] = field(init=False, default_factory=dict)
    seg_hist: dict[int, Tensor] = field(init=False, default_factory=dict)
    pairs: PairCounts = field(init=False)
    shuffled_pairs: PairCounts = field(init=False)

    def __post_init__(self) -> None:
        e, cfg = self.num_experts, self.config
        zeros = torch.zeros
        self.experts_hist = zeros(e + 1, dtype=torch.long)
        self.expert_tokens = zeros(e, dtype=torch.long)
        self.loss_experts = zeros(cfg.loss_bins, e + 1, dtype=torch.long)
        self.entropy_experts = zeros(cfg.entropy_bins, e + 1, dtype=torch.long)
        self.pos_tokens = zeros(0, dtype=torch.long)
        self.pos_assignments = zeros(0, dtype=torch.long)
        self.pos_dropped = zeros(0, dtype=torch.long)
        self.pairs = PairCounts(e + 1)  # + 1: the "no expert" pseudo-expert
        self.shuffled_pairs = PairCounts(e + 1)

    @property
    def num_tokens(self) -> int:
        """Tokens recorded in this layer."""
        return int(self.experts_hist.sum())


_BLOCK_RE = re.compile(r"(?:^|\.)(?:layers|blocks|layer|h)\.(\d+)(?:\.|$)")


def _layer_indices(names: list[str]) -> list[int]:
    """Block numbers parsed from module names, or 0..n-1 when they are missing or repeat.

    Example:
        >>> _layer_indices(["model.layers.1.mlp", "model.layers.3.mlp"]), _layer_indices(["a", "b"])
        ([1, 3], [0, 1])
    """
    matches = [_BLOCK_RE.search(n) for n in names]
    indices = [int(m.group(1)) for m in matches if m is not None]
    if len(indices) == len(names) and len(set(indices)) == len(indices):
        return indices
    return list(range(len(names)))


def find_routing(output: Any) -> Routing | None:
    """The first Routing in a module output: itself, ``.routing``, or inside a tuple/list.

    Example:
        >>> import torch
        >>> from dynroute.layers import MoE
        >>> find_routing(MoE(8, 16, 4)(torch.randn(3, 8))).num_tokens
        3
    """
    if isinstance(output, Routing):
        return output
    routing = getattr(output, "routing", None)
    if isinstance(routing, Routing):
        return routing
    if isinstance(output, tuple | list):
        for item in output:
            found = find_routing(item)
            if found is not None:
                return found
    return None


def publish_routing(module: nn.Module, routing: Routing) -> None:
    """Hand a module's Routing to every recorder attached to it (no-op if none).

    For adapters whose forward does not return a Routing (e.g. a transformers MoE
    block that returns router logits): call this right after routing.

    Example:
        >>> import torch
        >>> from dynroute.routing import top_k
        >>> block, rec = nn.Identity(), RoutingRecorder()
        >>> with rec.attached(block, layer_index=0):
        ...     publish_routing(block, top_k(torch.randn(5, 4), k=2))
        >>> rec.layers[0].num_tokens
        5
    """
    for recorder, layer in getattr(module, _SUBSCRIBERS, ()):
        recorder.record(layer, routing)


class RoutingRecorder:
    """Streams per-layer routing statistics of a model run (see the module docstring).

    Args:
        config: what to count (defaults: :class:`RecorderConfig`).

    Example:
        >>> import torch
        >>> from dynroute.layers import MoE
        >>> model = nn.Sequential(MoE(8, 16, 4, router="top_k", k=2))
        >>> rec = RoutingRecorder()
        >>> with rec.attached_model(model):
        ...     rec.begin_batch(torch.zeros(2, 6, dtype=torch.long))
        ...     _ = model(torch.randn(2, 6, 8))
        ...     rec.end_batch(torch.ones(2, 6))
        >>> rec.layers[0].experts_hist.tolist(), rec.num_tokens
        ([0, 0, 12, 0, 0], 12)
    """

    def __init__(self, config: RecorderConfig | None = None) -> None:
        self.config = config or RecorderConfig()
        self.layers: dict[int, LayerCounts] = {}
        self.token_occurrences = torch.zeros(0, dtype=torch.long)
        self.total_loss_experts = torch.zeros(self.config.loss_bins, 1, dtype=torch.long)
        self.num_tokens = 0
        self.num_sequences = 0
        self.loss_sum = 0.0
        self.loss_tokens = 0
        self._ids: Tensor | None = None
        self._shape: tuple[int, int] | None = None
        self._perm: Tensor | None = None
        self._pending: dict[int, Tensor] = {}
        self._handles: list[Any] = []
        self._warned = False
        self._gen = torch.Generator().manual_seed(self.config.shuffle_seed)

    # -- wiring -------------------------------------------------------------------------

    def attach(self, module: nn.Module, layer_index: int) -> None:
        """Record ``module``'s routing as layer ``layer_index``.

        Hooks its forward (used when the output holds a Routing) and subscribes it to
        :func:`publish_routing` (used by adapters whose output does not).
        """

        def hook(_mod: nn.Module, _args: Any, output: Any) -> None:
            routing = find_routing(output)
            if routing is not None:
                self.record(layer_index, routing)

        self._handles.append(module.register_forward_hook(hook))
        module.__dict__.setdefault(_SUBSCRIBERS, []).append((self, layer_index))
        self._handles.append(_Unsubscribe(module, self))
        # dynroute.hf blocks call ``routing_callback(block, routing)`` on every forward;
        # chain onto a callback someone else installed instead of replacing it.
        if hasattr(module, "routing_callback") and not _publishes(module.routing_callback):
            module.routing_callback = _Chained(module.routing_callback)

    def attach_model(self, model: nn.Module) -> int:
        """Attach every routing module of ``model``.

        A module is numbered by its transformer block (``layers.3.mlp`` -> 3, so models
        with dense layers in between keep their real layer numbers), else in module order.

        Routing modules are ``dynroute.layers.MoE`` and adapted transformers blocks
        (``dynroute.hf``: anything with a ``routing_callback`` attribute).

        Returns:
            int: the number of layers attached.

        Raises:
            ValueError: if the model has no ``MoE`` module.
        """
        from dynroute.layers import MoE

        found = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, MoE) or hasattr(m, "routing_callback")
        ]
        if not found:
            raise ValueError(
                f"RoutingRecorder: {type(model).__name__} has no dynroute.layers.MoE module "
                "nor a dynroute.hf adapted block; for a transformers MoE model call "
                "dynroute.hf.apply_routing(model, 'top_k') first, or attach routing modules "
                "yourself with recorder.attach(module, layer_index)"
            )
        indices = _layer_indices([name for name, _ in found])
        for i, (_, m) in zip(indices, found, strict=True):
            self.attach(m, i)
        return len(found)

    def detach(self) -> None:
        """Remove all hooks and subscriptions of this recorder."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @contextmanager
    def attached(self, module: nn.Module, layer_index: int) -> Iterator[RoutingRecorder]:
        """Context manager form of :meth:`attach` (detaches on exit)."""
        self.attach(module, layer_index)
        try:
            yield self
        finally:
            self.detach()

    @contextmanager
    def attached_model(self, model: nn.Module) -> Iterator[RoutingRecorder]:
        """Context manager form of :meth:`attach_model` (detaches on exit)."""
        self.attach_model(model)
        try:
            yield self
        finally:
            self.detach()

    # -- batches ------------------------------------------------------------------------

    def begin_batch(self, input_ids: Tensor) -> None:
        """Set the token ids ``[B, T]`` of the batch about to run (row = one sequence)."""
        ids = input_ids.detach().to("cpu", torch.long)
        if ids.ndim == 1:
            ids = ids[None]
        self._ids, self._shape = ids, (ids.shape[0], ids.shape[1])
        self._perm = torch.randperm(ids.numel(), generator=self._gen)
        self._pending.clear()
        self.num_tokens += ids.numel()
        self.num_sequences += ids.shape[0]
        self.token_occurrences = grow(self.token_occurrences, int(ids.max()) + 1)
        self.token_occurrences += torch.bincount(
            ids.flatten(), minlength=self.token_occurrences.numel()
        )

    def end_batch(self, token_loss: Tensor | None = None) -> None:
        """Add the batch's per-token loss ``[B, T]`` (nats) to the difficulty tables."""
        if token_loss is not None and self._pending:
            loss = token_loss.detach().float().cpu().flatten()
            ok = torch.isfinite(loss)
            cfg = self.config
            bins = (loss.clamp(0, cfg.max_loss) / cfg.loss_bin_width).long()
            bins = bins.clamp(max=cfg.loss_bins - 1)[ok]
            total = torch.zeros_like(loss, dtype=torch.long)
            for layer, k in self._pending.items():
                if k.numel() != loss.numel():
                    continue
                total += k
                lc = self.layers[layer]
                lc.loss_experts.index_put_((bins, k[ok]), torch.ones_like(bins), accumulate=True)
            total = total[ok]
            self.total_loss_experts = _grow2(
                self.total_loss_experts, (int(total.max()) if total.numel() else 0) + 1
            )
            self.total_loss_experts.index_put_(
                (bins, total), torch.ones_like(bins), accumulate=True
            )
            self.loss_sum += float(loss[ok].sum())
            self.loss_tokens += int(ok.sum())
        self._pending.clear()
        self._ids = None
        self._shape = None

    # -- recording ----------------------------------------------------------------------

    def _layout(self, n: int) -> tuple[int, int, Tensor | None]:
        """(B, T, ids) for a routing over n tokens: the batch's, else one sequence of n."""
        if self._shape is not None and self._shape[0] * self._shape[1] == n:
            return self._shape[0], self._shape[1], self._ids
        if self._shape is not None and not self._warned:
            warnings.warn(
                f"RoutingRecorder: a routing over {n} tokens does not match the batch "
                f"{self._shape}; recording it as one sequence without token ids",
                stacklevel=3,
            )
            self._warned = True
        if self._shape is None:
            self.num_tokens += n
            self.num_sequences += 1
        return 1, n, None

    @torch.no_grad()
    def record(self, layer: int, routing: Routing) -> None:
        """Add one layer's Routing (over the current batch's B*T tokens, row-major)."""
        e = routing.num_experts
        lc = self.layers.get(layer)
        if lc is None:
            lc = self.layers[layer] = LayerCounts(e, self.config)
        elif lc.num_experts != e:
            raise ValueError(
                f"RoutingRecorder: layer {layer} was recorded with {lc.num_experts} experts, "
                f"now {e}; give each routing module its own layer_index"
            )
        b, t, ids = self._layout(routing.num_tokens)
        token, expert = routing.token.detach().cpu(), routing.expert.detach().cpu()
        k = torch.bincount(token, minlength=routing.num_tokens)
        self._pending[layer] = k
        lc.experts_hist += torch.bincount(k, minlength=e + 1)
        lc.expert_tokens += torch.bincount(expert, minlength=e)

        ent = router_entropy(routing.probs.cpu(), _cpu(routing.null_probs))
        choices = e + (0 if routing.null_probs is None else routing.null_probs.shape[-1])
        ent_bin = (ent / math.log(max(choices, 2)) * self.config.entropy_bins).long()
        ent_bin = ent_bin.clamp(0, self.config.entropy_bins - 1)
        lc.entropy_experts.index_put_((ent_bin, k), torch.ones_like(k), accumulate=True)

        mask = torch.zeros(b * t, e, dtype=torch.bool)
        mask[token, expert] = True
        mask = mask.view(b, t, e)
        kt = k.view(b, t)
        lc.pos_tokens = grow(lc.pos_tokens, t)
        lc.pos_assignments = grow(lc.pos_assignments, t)
        lc.pos_dropped = grow(lc.pos_dropped, t)
        lc.pos_tokens[:t] += b
        lc.pos_assignments[:t] += kt.sum(0)
        if self.config.capacity_factor is not None:
            dropped = capacity_drops(mask, self.config.capacity_factor)
            lc.pos_dropped[:t] += dropped.sum(dim=(0, 2))

        for s in self.config.segment_lengths:
            if s > t:
                continue
            sorted_sum, hist = segment_accumulators(mask, s)
            lc.seg_sorted[s] = lc.seg_sorted.get(s, torch.zeros(e, dtype=torch.long)) + sorted_sum
            lc.seg_hist[s] = lc.seg_hist.get(s, torch.zeros(s + 1, dtype=torch.long)) + hist

        if ids is not None:
            # Tokens that run no expert (null experts) count as routed to pseudo-expert E,
            # so "always skipped" is as consistent as "always expert 3".
            skipped = (k == 0).nonzero().flatten()
            pair_token = torch.cat([token, skipped])
            pair_expert = torch.cat([expert, torch.full_like(skipped, e)])
            flat = ids.flatten()
            lc.pairs.add(flat[pair_token], pair_expert)
            assert self._perm is not None
            lc.shuffled_pairs.add(flat[self._perm][pair_token], pair_expert)


def _cpu(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().cpu()


class _Chained:
    """A ``routing_callback`` that calls the previous one, then :func:`publish_routing`."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, module: nn.Module, routing: Routing) -> None:
        if self.previous is not None:
            self.previous(module, routing)
        publish_routing(module, routing)


def _publishes(callback: Any) -> bool:
    return callback is publish_routing or isinstance(callback, _Chained)


class _Unsubscribe:
    """A removable handle that drops one recorder's subscriptions to a module.

    The last one to leave also puts back the ``routing_callback`` attach() replaced.
    """

    def __init__(self, module: nn.Module, recorder: RoutingRecorder) -> None:
        self.module = weakref.ref(module)
        self.recorder = recorder

    def remove(self) -> None:
        module = self.module()
        if module is None or _SUBSCRIBERS not in module.__dict__:
            return
        subs = [s for s in module.__dict__[_SUBSCRIBERS] if s[0] is not self.recorder]
        if subs:
            module.__dict__[_SUBSCRIBERS] = subs
            return
        del module.__dict__[_SUBSCRIBERS]
        callback = getattr(module, "routing_callback", None)
        if isinstance(callback, _Chained):
            module.routing_callback = callback.previous
