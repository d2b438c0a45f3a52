"""One MoE layer of a trained top-k model, whichever kind: a DynMoE ``MoE`` layer or a
transformers sparse block adapted by ``dynroute.hf``. A slot knows the layer's own k and
its gate, switches the layer's router, and reports every routing the layer makes.

Example:
    >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
    >>> model = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=2,
    ...     n_heads=2, d_ff=16, num_experts=4, router={"name": "top_k", "k": 2}))
    >>> [(s.index, s.k, s.num_experts) for s in moe_slots(model)]
    [(0, 2, 4), (1, 2, 4)]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dynroute.hf import UnsupportedModelError, adapted_blocks, apply_routing
from dynroute.layers import MoE
from dynroute.models.config import router_fields
from dynroute.routing import NullExperts, Routing, TopK, make_router

__all__ = ["NULL_OFF", "DenseModelError", "DynMoESlot", "HFSlot", "NullGate", "Slot", "moe_slots"]

RoutingWatcher = Callable[[Routing], None]
#: A null expert's logit that no token ever picks: −inf as the lowest finite float32.
NULL_OFF = float(torch.finfo(torch.float32).min)


class DenseModelError(ValueError):
    """The model has no top-k MoE layer: post-hoc routing has nothing to give back."""


class Slot(Protocol):
    """What :mod:`dynroute.posthoc` needs of one MoE layer."""

    index: int
    k: int
    num_experts: int

    @property
    def gate(self) -> nn.Module: ...

    def use(self, name: str, normalize: bool | None = None, **kwargs: Any) -> None: ...

    def restore(self) -> None: ...

    def watch(self, fn: RoutingWatcher) -> Callable[[], None]: ...


class NullGate(nn.Module):
    """A gate with ``num_null`` null-expert columns (AdaMoE) after the E real ones.

    The null logits are ``x @ null_weight.T + null_bias``: the weight starts at zero and
    the bias at ``init``; the default, :data:`NULL_OFF` (−inf as the lowest finite float:
    routers refuse non-finite logits), has no token ever pick a null, so the model is
    unchanged.

    Example:
        >>> gate = NullGate(nn.Linear(4, 3, bias=False), num_null=2)
        >>> gate(torch.randn(5, 4)).shape
        torch.Size([5, 5])
    """

    def __init__(self, gate: nn.Linear, num_null: int, init: float | None = None) -> None:
        super().__init__()
        self.real = gate
        weight = gate.weight
        self.null_weight = nn.Parameter(weight.new_zeros(num_null, gate.in_features))
        init = NULL_OFF if init is None else init
        self.null_bias = nn.Parameter(weight.new_full((num_null,), init))

    def forward(self, x: Tensor) -> Tensor:
        real = self.real(x)
        nulls = x.to(self.null_weight.dtype) @ self.null_weight.t() + self.null_bias
        return torch.cat([real, nulls.to(real.dtype)], dim=-1)


class DynMoESlot:
    """A DynMoE ``MoE`` layer trained with ``top_k``."""

    def __init__(self, index: int, layer: MoE) -> None:
        if not isinstance(layer, MoE):
            raise DenseModelError(
                f"its layer {index} is a {type(layer).__name__}, not a top-k MoE layer: "
                "post-hoc routing starts from a model trained with a fixed top-k router"
            )
        if not isinstance(layer.route, TopK):
            raise DenseModelError(
                f"MoE layer {index} routes with {layer.route!r}, not top-k: post-hoc routing "
                "starts from a model trained with a fixed top-k router"
            )
        self.index, self.layer, self.original = index, layer, layer.route
        self.k, self.num_experts = layer.route.k, layer.num_experts
        self.normalize = layer.route.normalize

    @property
    def gate(self) -> nn.Module:
        return self.layer.gate

    def use(self, name: str, normalize: bool | None = None, **kwargs: Any) -> None:
        """Route with the registered router ``name`` (``normalize`` None: as trained)."""
        if "normalize" in router_fields(name):
            kwargs["normalize"] = self.normalize if normalize is None else normalize
        self.layer.route = make_router({"name": name, **kwargs})

    def restore(self) -> None:
        """Back to the trained top-k router."""
        self.layer.route = self.original

    def add_null_experts(self, num_null: int, init: float | None = None) -> NullGate:
        """Give the gate ``num_null`` null columns and route with top-k over real + null
        (AdaMoE); at ``init`` None (:data:`NULL_OFF`) the outputs are the trained model's."""
        if not self.normalize:
            raise ValueError(
                f"MoE layer {self.index}: null experts renormalise the real experts' weights; "
                "this layer's top-k does not (normalize=false), so the conversion would not "
                "be exact"
            )
        gate = self.layer.gate
        if not isinstance(gate, NullGate):
            gate = NullGate(gate, num_null, init)
            self.layer.gate = gate
        self.layer.route = NullExperts(k=self.k, num_null=num_null)
        return gate

    def watch(self, fn: RoutingWatcher) -> Callable[[], None]:
        """Call ``fn(routing)`` after every forward of the layer; returns the remover."""
        handle = self.layer.register_forward_hook(lambda _m, _i, out: fn(out[1].routing))
        return handle.remove


class HFSlot:
    """A transformers sparse MoE block adapted by :func:`dynroute.hf.apply_routing`."""

    def __init__(self, index: int, model: nn.Module, block: Any) -> None:
        self.index, self.model, self.block = index, model, block
        self.key = block.layer_index if block.layer_index is not None else block.layer_name
        self.k, self.num_experts = int(block.native_k), int(block.num_experts)

    @property
    def gate(self) -> nn.Module:
        return self.block.gate

    def use(self, name: str, normalize: bool | None = None, **kwargs: Any) -> None:
        """Route with ``name``; the weights are the model's own (``normalize`` None: as the
        model renormalises)."""
        apply_routing(self.model, name, layers=[self.key], normalize=normalize, **kwargs)

    def restore(self) -> None:
        apply_routing(self.model, "top_k", layers=[self.key])

    def watch(self, fn: RoutingWatcher) -> Callable[[], None]:
        self.block.routing_callback = lambda _block, routing: fn(routing)

        def remove() -> None:
            self.block.routing_callback = None

        return remove


def moe_slots(model: nn.Module) -> list[DynMoESlot] | list[HFSlot]:
    """The MoE layers of a DynMoE model or a transformers MoE model (adapted here, with its
    own top-k routing, when it is not yet), in layer order.

    Raises:
        DenseModelError: no MoE layer, or a DynMoE layer not trained with top-k.
    """
    moe_layers = getattr(model, "moe_layers", None)
    if callable(moe_layers):
        layers = moe_layers()
        if not layers:
            raise DenseModelError("the model has no MoE layer (dense): nothing to route")
        return [DynMoESlot(i, layer) for i, layer in enumerate(layers)]
    if not adapted_blocks(model):
        try:
            apply_routing(model, "top_k")
        except UnsupportedModelError as err:
            raise DenseModelError(f"no top-k MoE block to route: {err}") from None
    return [HFSlot(i, model, block) for i, block in enumerate(adapted_blocks(model))]
