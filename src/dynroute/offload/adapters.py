"""The MoE layers of a model, seen the same way whatever built them.

:func:`moe_layers` finds, in module order, dynroute's own :class:`~dynroute.layers.MoE`
(DynMoE models) and transformers MoE blocks adapted by ``dynroute.hf``
(:class:`~dynroute.hf.block.DynamicMoEBlock`), and gives each as an :class:`OffloadLayer`:
expert e's weights as named tensors, how to compute one expert from such tensors, how to
route hidden states with the layer's own gate and router (for pre-gating), and where to
install offloaded experts.

Example:
    >>> import torch
    >>> from dynroute.layers import MoE
    >>> layers = moe_layers(torch.nn.Sequential(MoE(8, 16, 4), MoE(8, 16, 4)))
    >>> len(layers), sorted(layers[0].expert_tensors(0))
    (2, ['down', 'gate_up'])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from dynroute.hf.block import DYNROUTE_EXPERTS, DynamicMoEBlock
from dynroute.hf.routers import route as hf_route
from dynroute.layers import MoE
from dynroute.layers.experts import Experts, ExpertWeights
from dynroute.routing import Routing
from dynroute.routing.state import route_logits

__all__ = ["OffloadLayer", "moe_layers"]


@dataclass
class OffloadLayer:
    """One MoE layer as the offload runtime needs it.

    Attributes:
        index: position among the model's MoE layers (the ``layer`` of a key).
        module: the MoE / DynamicMoEBlock.
        num_experts, d_model, dtype: of its experts.
        expert_tensors: e -> {name: tensor} (expert e's weights; views or copies).
        compute: ({name: tensor}, rows [n, d]) -> [n, d]: one expert on its rows.
        route: flat hidden states [N, d] -> Routing with this layer's gate and router
            (no side effect on training state; for pre-gating).
    """

    index: int
    module: nn.Module
    num_experts: int
    d_model: int
    dtype: torch.dtype
    expert_tensors: Callable[[int], dict[str, Tensor]]
    compute: Callable[[dict[str, Tensor], Tensor], Tensor]
    route: Callable[[Tensor], Routing]

    def expert_bytes(self) -> int:
        """Bytes of one expert's weights."""
        return sum(t.numel() * t.element_size() for t in self.expert_tensors(0).values())


def own_layer(index: int, moe: MoE) -> OffloadLayer:
    experts = moe.experts
    if not isinstance(experts, Experts):
        raise NotImplementedError(f"offload: layer {index} has no Experts module")
    # one expert: its parameters' names and shapes (none for experts already offloaded);
    # ``compute`` holds only this, so the full experts can be freed once offloaded
    template = experts.shard(0, 1) if experts.stacked or hasattr(experts, "layout") else None

    def tensors(e: int) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in experts.shard(e, e + 1).named_parameters()}

    def compute(slot: dict[str, Tensor], rows: Tensor) -> Tensor:
        if template is None:
            raise RuntimeError(f"offload: layer {index}'s experts are offloaded already")
        offsets = torch.tensor([rows.shape[0]], dtype=torch.int32, device=rows.device)
        return functional_call(template, slot, (rows, offsets))  # type: ignore[no-any-return]

    def route(flat: Tensor) -> Routing:
        logits = moe.gate(flat.to(moe.gate.weight.dtype)).float()
        return route_logits(moe.route, logits, moe.router_state, None)

    return OffloadLayer(
        index, moe, experts.num_experts, experts.d_model, experts.dtype, tensors, compute, route
    )


def hf_layer(index: int, block: DynamicMoEBlock) -> OffloadLayer:
    if block.experts_implementation != DYNROUTE_EXPERTS:
        raise NotImplementedError(
            f"offload: {block.layer_name} computes its experts with transformers' "
            f"{block.experts_implementation!r}; offload needs dynroute's dispatch "
            "(model.set_experts_implementation('dynroute'))"
        )
    experts = block.experts
    activation = experts.act_fn

    def tensors(e: int) -> dict[str, Tensor]:
        return {
            "gate_up_proj": experts.gate_up_proj[e].detach(),
            "down_proj": experts.down_proj[e].detach(),
        }

    def compute(slot: dict[str, Tensor], rows: Tensor) -> Tensor:
        weights = ExpertWeights(
            (slot["gate_up_proj"].t(),), (slot["down_proj"].t(),), activation=activation
        )
        return weights.ffn(rows, 0)

    def route(flat: Tensor) -> Routing:
        logits = block.gate(flat)[0]
        return hf_route(block.spec, block.family, block.gate, logits, block.router)

    gate_up = experts.gate_up_proj
    return OffloadLayer(
        index, block, int(gate_up.shape[0]), int(gate_up.shape[2]), gate_up.dtype, tensors,
        compute, route,
    )  # fmt: skip


def moe_layers(model: nn.Module) -> list[OffloadLayer]:
    """Every MoE layer of ``model`` in module order (ours and adapted transformers blocks).

    Raises:
        ValueError: the model has no MoE layer dynroute can offload (an unpatched
            transformers model: patch it first, ``dynroute.hf.apply_routing``).
    """
    found: list[OffloadLayer] = []
    for module in model.modules():
        if isinstance(module, MoE):
            found.append(own_layer(len(found), module))
        elif isinstance(module, DynamicMoEBlock):
            found.append(hf_layer(len(found), module))
    if not found:
        raise ValueError(
            f"offload: {type(model).__name__} has no MoE layer dynroute runs (a DynMoE model, "
            "or a transformers MoE adapted with dynroute.hf.apply_routing / dynroute patch)"
        )
    return found
