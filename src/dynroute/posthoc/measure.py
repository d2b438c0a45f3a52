"""What a routing setting costs and keeps: validation loss, experts per token per layer,
and the share of tokens that still run the expert the trained top-k model ranked first.

Example:
    >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
    >>> from dynroute.posthoc.slots import moe_slots
    >>> model = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=2,
    ...     n_heads=2, d_ff=16, num_experts=4, router={"name": "top_k", "k": 2}))
    >>> windows = torch.randint(0, 32, (4, 9))
    >>> base = measure(model, moe_slots(model), windows)
    >>> base.mean_experts, base.top1_kept
    (2.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dynroute.evaluation import evaluate_lm
from dynroute.posthoc.slots import Slot
from dynroute.routing import Routing

__all__ = ["Measurement", "RoutingCounter", "forward_batches", "measure", "window_batches"]


@dataclass
class Measurement:
    """One routing setting on the evaluation windows.

    Attributes:
        val_loss: mean next-token cross-entropy (nats).
        mean_experts: routed experts per token, averaged over tokens and MoE layers.
        per_layer: experts per token of each MoE layer.
        top1_kept: share of (token, layer) pairs whose routing includes the expert the
            reference (the trained top-k model) ranked first for that token and layer.
        per_layer_top1_kept: the same per layer.
        tokens: tokens scored.
        top1: the argmax expert of every routed token, per layer (the reference's, when
            this measurement is the reference).
    """

    val_loss: float
    mean_experts: float
    per_layer: list[float]
    top1_kept: float
    per_layer_top1_kept: list[float]
    tokens: int
    top1: list[Tensor] = field(default_factory=list, repr=False)


def routing_mask(routing: Routing) -> Tensor:
    """Boolean [N, E]: the (token, expert) pairs a routing runs."""
    mask = torch.zeros(routing.num_tokens, routing.num_experts, dtype=torch.bool)
    return mask.index_put_((routing.token.cpu(), routing.expert.cpu()), torch.tensor(True))


class RoutingCounter:
    """Counts experts per token of every slot while watching it (a context manager).

    With ``reference`` (per-layer argmax experts of the trained model, in the order the
    tokens are routed) it also counts how many tokens keep that expert.
    """

    def __init__(self, slots: Sequence[Slot], reference: list[Tensor] | None = None) -> None:
        self.slots, self.reference = list(slots), reference
        n = len(self.slots)
        self.tokens, self.assignments, self.kept = [0] * n, [0] * n, [0] * n
        self.top1: list[list[Tensor]] = [[] for _ in range(n)]
        self._removers: list[Any] = []

    def _record(self, i: int, routing: Routing) -> None:
        n = routing.num_tokens
        with torch.no_grad():
            mask = routing_mask(routing)
            if self.reference is not None:
                ref = self.reference[i][self.tokens[i] : self.tokens[i] + n]
            else:
                ref = routing.probs.detach().argmax(dim=-1).cpu()
                self.top1[i].append(ref)
            self.kept[i] += int(mask.gather(1, ref[:, None].long()).sum())
        self.tokens[i] += n
        self.assignments[i] += routing.num_assignments

    def per_layer(self) -> list[float]:
        return [a / max(t, 1) for a, t in zip(self.assignments, self.tokens, strict=True)]

    def mean_experts(self) -> float:
        return float(np.mean(self.per_layer()))

    def __enter__(self) -> RoutingCounter:
        for i, slot in enumerate(self.slots):
            self._removers.append(slot.watch(lambda r, i=i: self._record(i, r)))
        return self

    def __exit__(self, *exc: object) -> None:
        for remove in self._removers:
            remove()
        self._removers = []


def window_batches(
    windows: Tensor | np.ndarray, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """(inputs [B, T], targets [B, T]) of windows [n, T + 1], in order."""
    ids = torch.as_tensor(np.asarray(windows), dtype=torch.long)
    for start in range(0, ids.shape[0], batch_size):
        chunk = ids[start : start + batch_size]
        yield chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def forward_batches(model: nn.Module, batches: Sequence[Tensor]) -> None:
    """Run the model over input batches [B, T] (routing statistics only)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for x in batches:
        model(x.to(device), use_cache=False)
    model.train(was_training)


def measure(
    model: nn.Module,
    slots: Sequence[Slot],
    windows: Tensor | np.ndarray,
    reference: Measurement | None = None,
    batch_size: int = 8,
) -> Measurement:
    """Evaluate the model as it routes now on ``windows`` [n, T + 1].

    Args:
        reference: the trained model's measurement (its ``top1``); None: this is the
            reference, and ``top1_kept`` counts against the model's own argmax.
    """
    counter = RoutingCounter(slots, None if reference is None else reference.top1)
    with counter:
        result = evaluate_lm(
            model, window_batches(windows, batch_size), forward_kwargs={"use_cache": False}
        )
    kept = [k / max(t, 1) for k, t in zip(counter.kept, counter.tokens, strict=True)]
    return Measurement(
        val_loss=result.loss,
        mean_experts=counter.mean_experts(),
        per_layer=counter.per_layer(),
        top1_kept=float(np.mean(kept)),
        per_layer_top1_kept=kept,
        tokens=result.tokens,
        top1=[torch.cat(t) for t in counter.top1] if reference is None else reference.top1,
    )
