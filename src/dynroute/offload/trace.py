"""Routing traces: which experts each token used in each MoE layer, and what pre-gating
predicted for it, recorded while a model evaluates, generates or serves.

A trace is a list of steps (one token each, in the order the model saw them; a forward
call over [B, T] tokens is B·T steps, sequence after sequence) and the sizes of the
forward calls, so :mod:`dynroute.offload.simulate` can replay it token by token (decode)
or call by call (what the runtime did).

Example:
    >>> import torch
    >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
    >>> model = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=2,
    ...     n_heads=2, d_ff=32, num_experts=4)).eval()
    >>> with record_trace(model) as recorder:
    ...     _ = model(torch.randint(0, 32, (2, 3)))
    >>> trace = recorder.trace()
    >>> trace.num_tokens, trace.num_layers, trace.calls
    (6, 2, [6])
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynroute.common.files import atomic_write_text
from dynroute.offload.adapters import OffloadLayer, moe_layers
from dynroute.routing import Routing

__all__ = ["RoutingTrace", "TraceRecorder", "record_trace", "token_sets"]

#: per step, per layer: the experts used (sorted)
Steps = list[list[tuple[int, ...]]]


@dataclass
class RoutingTrace:
    """A recorded routing trace.

    Attributes:
        num_experts: E per MoE layer; expert_bytes: bytes of one expert.
        used: [step][layer] -> sorted experts the token used.
        predicted: [step][layer] -> experts pre-gating predicted for that layer (from the
            previous layer's input; layer 0: none).
        calls: tokens per forward call, in order (their sum is the number of steps).
        label: what produced it (``"top_k"``, a model name, ...).
    """

    num_experts: list[int]
    expert_bytes: int
    used: Steps = field(default_factory=list)
    predicted: Steps = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    label: str = ""

    @property
    def num_layers(self) -> int:
        return len(self.num_experts)

    @property
    def num_tokens(self) -> int:
        return len(self.used)

    def save(self, path: str | Path) -> None:
        """Write as JSON (``load`` reads it back)."""
        atomic_write_text(path, json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> RoutingTrace:
        data = json.loads(Path(path).read_text())
        for key in ("used", "predicted"):
            data[key] = [[tuple(es) for es in step] for step in data[key]]
        return cls(**data)


def token_sets(routing: Routing) -> list[tuple[int, ...]]:
    """Per token, the sorted experts a routing assigned it.

    Example:
        >>> from dynroute.routing import top_k
        >>> token_sets(top_k(torch.tensor([[3.0, 2.0, 0.0], [0.0, 1.0, 2.0]]), 2))
        [(0, 1), (1, 2)]
    """
    sets: list[list[int]] = [[] for _ in range(routing.num_tokens)]
    for t, e in zip(routing.token.tolist(), routing.expert.tolist(), strict=True):
        sets[t].append(e)
    return [tuple(sorted(s)) for s in sets]


class TraceRecorder:
    """Forward hooks on every MoE layer that build a :class:`RoutingTrace`."""

    def __init__(
        self, model: nn.Module, predict: bool = True, label: str = "", max_tokens: int | None = None
    ) -> None:
        self.layers: list[OffloadLayer] = moe_layers(model)
        self.predict = predict
        self.max_tokens = max_tokens
        self.result = RoutingTrace(
            [lay.num_experts for lay in self.layers], self.expert_bytes(), label=label
        )
        self.used: dict[int, list[tuple[int, ...]]] = {}
        self.predicted: dict[int, list[tuple[int, ...]]] = {}
        self.handles: list[Any] = []
        #: adapted blocks' own record_routing, put back by ``remove``
        self.recording = {
            lay.index: lay.module.record_routing
            for lay in self.layers
            if hasattr(lay.module, "record_routing")
        }
        for lay in self.layers:
            if hasattr(lay.module, "record_routing"):
                lay.module.record_routing = True
            self.handles.append(lay.module.register_forward_pre_hook(self.before(lay.index)))
            self.handles.append(lay.module.register_forward_hook(self.after(lay.index)))

    def expert_bytes(self) -> int:
        module = self.layers[0].module
        experts = getattr(module, "offloaded_experts", None) or module.experts
        runtime = getattr(experts, "runtime", None)  # an offloaded model: its runtime knows
        return int(runtime.expert_bytes) if runtime is not None else self.layers[0].expert_bytes()

    def before(self, index: int) -> Any:
        @torch.no_grad()
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if index == 0:
                self.flush()
            if self.full:
                return
            if self.predict and index + 1 < len(self.layers):
                x: Tensor = args[0]
                self.predicted[index + 1] = token_sets(
                    self.layers[index + 1].route(x.reshape(-1, x.shape[-1]))
                )

        return hook

    def after(self, index: int) -> Any:
        def hook(module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            if self.full:
                return
            routing = output[1].routing if isinstance(output, tuple) else module.last_routing
            self.used[index] = token_sets(routing)

        return hook

    @property
    def full(self) -> bool:
        """Whether ``max_tokens`` steps are recorded (later calls are not)."""
        return self.max_tokens is not None and self.result.num_tokens >= self.max_tokens

    def flush(self) -> None:
        """Turn the buffered forward call into steps (up to ``max_tokens``)."""
        if len(self.used) < len(self.layers) or self.full:
            self.used.clear()
            self.predicted.clear()
            return
        n = len(self.used[0])
        if self.max_tokens is not None:
            n = min(n, self.max_tokens - self.result.num_tokens)
        layers = range(len(self.layers))
        empty = [()] * n
        self.result.used += [[self.used[lay][i] for lay in layers] for i in range(n)]
        self.result.predicted += [
            [self.predicted.get(lay, empty)[i] for lay in layers] for i in range(n)
        ]
        self.result.calls.append(n)  # a call cut at max_tokens counts what was kept
        self.used.clear()
        self.predicted.clear()

    def trace(self) -> RoutingTrace:
        """The trace so far."""
        self.flush()
        return self.result

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for lay in self.layers:
            if lay.index in self.recording:
                lay.module.record_routing = self.recording[lay.index]


@contextmanager
def record_trace(
    model: nn.Module, predict: bool = True, label: str = "", max_tokens: int | None = None
) -> Iterator[TraceRecorder]:
    """Record a :class:`RoutingTrace` of what ``model`` runs inside the block (at most
    ``max_tokens`` tokens; ``predict``: also pre-gating's predictions)."""
    recorder = TraceRecorder(model, predict, label, max_tokens)
    try:
        yield recorder
    finally:
        recorder.flush()
        recorder.remove()
