"""Put a dynroute router into every sparse MoE block of a loaded transformers model."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from dynroute.hf.block import (
    DYNROUTE_EXPERTS,
    DynamicMoEBlock,
    expert_weights,
    register_experts_implementation,
)
from dynroute.hf.families import (
    UnsupportedModelError,
    family_of,
    supported_families_text,
)
from dynroute.hf.routers import RouterSpec, route
from dynroute.routing import Router, Routing
from dynroute.routing.losses import DYNAMIC_WEIGHT, LOAD_BALANCE_WEIGHT, router_loss

__all__ = [
    "CONFIG_KEY",
    "adapted_blocks",
    "apply_routing",
    "remove_routing",
    "reset_routing_stats",
    "routing_config",
    "routing_stats",
]

CONFIG_KEY = "dynroute_routing"
CONFIG_VERSION = 1
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def _layer_index(name: str) -> int | None:
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None


def adapted_blocks(model: nn.Module) -> list[DynamicMoEBlock]:
    """The model's adapted blocks, in module order.

    Example:
        >>> import torch
        >>> adapted_blocks(torch.nn.Linear(2, 2))
        []
    """
    return [m for m in model.modules() if isinstance(m, DynamicMoEBlock)]


def _unsupported_error(model: nn.Module) -> UnsupportedModelError:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    moe_like = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if hasattr(m, "experts") or "moe" in type(m).__name__.lower()
        }
    )
    found = f"; it has MoE-looking modules {moe_like} of an unsupported family" if moe_like else ""
    return UnsupportedModelError(
        f"dynroute.hf: {type(model).__name__} (model_type={model_type!r}) has no sparse MoE "
        f"block dynroute can adapt{found}. Supported families: {supported_families_text()}."
    )


def _select(layers: Iterable[int | str] | None, index: int | None, name: str) -> bool:
    if layers is None:
        return True
    return any(index == item if isinstance(item, int) else name == item for item in layers)


def apply_routing(
    model: nn.Module,
    router: str | Router | RouterSpec | Callable[[Tensor], Routing] = "top_k",
    *,
    layers: Iterable[int | str] | None = None,
    dispatch: str = "grouped",
    **router_kwargs: Any,
) -> nn.Module:
    """Replace the routing of every sparse MoE block of a transformers model, in place.

    Each supported block (Mixtral, Qwen2-MoE, Qwen3-MoE, Qwen3-Next, OLMoE, DeepSeek-V3,
    GLM-4-MoE) becomes a :class:`DynamicMoEBlock` that keeps the original gate, experts
    and shared experts (same parameters, same state-dict names) and runs the experts
    through ``dynroute.dispatch.grouped``.

    Args:
        model: a loaded transformers model (``*ForCausalLM`` or the base model).
        router: ``"top_k"`` (the model's own routing, exactly, unless ``k`` is given),
            ``"top_p"`` (``p``, optional ``max_experts``), ``"null_experts"`` (``null_logit``,
            optional ``k``/``num_null``, default the model's k), ``"expert_choice"``
            (``capacity_factor``; not causal), any other registered router by name
            (``"my_router"`` or ``"my_router:k=1"``; a field ``k`` left out is the model's
            k), a :class:`~dynroute.routing.Router`, a :class:`RouterSpec`, or a callable
            ``logits [N, E] -> Routing`` that gets the gate's raw logits and whose weights
            are used unchanged.
        layers: decoder-layer indices (or block names) to change; None = every block.
            Call again with other ``layers`` to give layers different settings. Blocks
            not yet adapted and not in ``layers`` get ``"top_k"`` (their own routing).
        dispatch: "grouped" (default), "loop" or "dense".
        **router_kwargs: the router's arguments, plus ``normalize`` (renormalise kept
            weights per token; default: as the model does).

    Returns:
        The same model object, adapted. ``model.config.dynroute_routing`` records the
        settings when every router is named, so ``save_pretrained`` keeps them.

    Raises:
        UnsupportedModelError: the model has no supported sparse MoE block.

    Example:
        >>> import torch
        >>> from transformers import OlmoeConfig, OlmoeForCausalLM
        >>> cfg = OlmoeConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
        ...     num_attention_heads=4, intermediate_size=16, num_experts=8, num_experts_per_tok=2)
        >>> model = apply_routing(OlmoeForCausalLM(cfg), "top_p", p=0.4)
        >>> logits = model(torch.randint(0, 128, (1, 5))).logits
        >>> sorted(routing_stats(model)["per_layer"])
        [0, 1]
    """
    spec = RouterSpec.build(router, **router_kwargs)
    targets = _moe_blocks(model)
    chosen = {n for n, _ in targets if _select(layers, _layer_index(n), n)}
    if not chosen:
        names = [(_layer_index(n), n) for n, _ in targets]
        raise ValueError(f"apply_routing: layers={layers!r} matched no MoE block; blocks: {names}")
    own = RouterSpec.build("top_k")
    for name, module in targets:
        if name not in chosen and isinstance(module, DynamicMoEBlock):
            continue
        # Blocks outside ``layers`` get the model's own routing (identical outputs), so
        # every MoE layer is counted in the statistics and recorded in the saved config.
        _adapt(model, name, module, spec if name in chosen else own, dispatch)
    _sync_config(model)
    return model


def _moe_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every sparse MoE block, adapted or of a supported family."""
    blocks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, DynamicMoEBlock) or family_of(module) is not None
    ]
    if not blocks:
        raise _unsupported_error(model)
    return blocks


def _adapt(model: nn.Module, name: str, module: nn.Module, spec: RouterSpec, dispatch: str) -> None:
    """Route block ``name`` with ``spec``: wrap a transformers block, or re-route an adapted one.

    Checks first, so a bad setting fails here rather than mid-forward.
    """
    if isinstance(module, DynamicMoEBlock):
        block = module
    else:
        family = family_of(module)
        block = DynamicMoEBlock(module, family, spec, name, _layer_index(name), dispatch)
    expert_weights(block.experts)  # unsupported expert layouts fail here, not mid-forward
    # Dry run on two zero tokens: bad values (p=1.5, k > E) fail now with the router's message.
    zeros = block.gate.weight.new_zeros(2, block.num_experts)
    route(spec, block.family, block.gate, zeros)
    block.set_router(spec, dispatch)
    if block is not module:
        _use_dynroute_experts(model, block)
        model.set_submodule(name, block)


def _use_dynroute_experts(model: nn.Module, block: DynamicMoEBlock) -> None:
    """Name dynroute's dispatch as the model's ``experts_implementation`` unless the user
    chose another one, so the block sees a later ``set_experts_implementation``.

    transformers leaves no trace of whether its default was asked for: an implementation
    other than the default (``from_pretrained(..., experts_implementation="batched_mm")``)
    is kept; the default (``"grouped_mm"`` where torch has it) becomes ``"dynroute"``.
    """
    config = getattr(block.experts, "config", None)
    if config is None or not register_experts_implementation():
        return
    current = config._experts_implementation
    if current == DYNROUTE_EXPERTS:
        return
    default = getattr(model, "get_correct_experts_implementation", None)
    try:
        is_default = default is None or current in (None, default(None))
    except (ValueError, ImportError):
        is_default = True
    if is_default:
        block.replaced_experts_implementation = current
        config._experts_implementation = DYNROUTE_EXPERTS


def remove_routing(model: nn.Module) -> nn.Module:
    """Put the original transformers blocks back (parameters are shared, nothing is copied).

    Example:
        >>> import torch
        >>> remove_routing(torch.nn.Linear(2, 2)).out_features
        2
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, DynamicMoEBlock):
            original = module.original
            original.train(module.training)
            model.set_submodule(name, original)
            config = getattr(module.experts, "config", None)
            previous = module.replaced_experts_implementation
            if previous and config._experts_implementation == DYNROUTE_EXPERTS:
                config._experts_implementation = previous
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)
    return model


def routing_config(model: nn.Module) -> dict[str, Any]:
    """The JSON-able routing settings of an adapted model (what goes into config.json).

    Keys of ``"layers"`` are decoder-layer indices as strings (or block names when a block
    has no layer index).

    Raises:
        ValueError: a block uses a callable router, which cannot be saved.

    Example:
        >>> import torch
        >>> routing_config(torch.nn.Linear(2, 2))
        {'version': 1, 'dispatch': 'grouped', 'layers': {}}
    """
    blocks = adapted_blocks(model)
    dispatch = blocks[0].dispatch_name if blocks else "grouped"
    layers = {
        str(b.layer_index if b.layer_index is not None else b.layer_name): b.spec.to_dict()
        for b in blocks
    }
    return {"version": CONFIG_VERSION, "dispatch": dispatch, "layers": layers}


def _sync_config(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    if all(b.spec.serializable for b in adapted_blocks(model)):
        setattr(config, CONFIG_KEY, routing_config(model))
    elif hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)


def routing_stats(model: nn.Module) -> dict[str, Any]:
    """Mean routed experts per token since the last reset, overall and per layer.

    Returns:
        ``{"mean_experts": float, "native_k": float, "expert_fraction": float,
        "tokens": int, "per_layer": {layer: mean}}``; ``expert_fraction`` is mean experts
        over the model's own k (the routed-expert compute relative to the original).
        The overall mean averages the layers' assignments over their tokens.

    Example:
        >>> import torch
        >>> routing_stats(torch.nn.Linear(2, 2))["per_layer"]
        {}
    """
    blocks = adapted_blocks(model)
    tokens = sum(b.tokens_seen for b in blocks)
    assignments = sum(b.assignments_seen for b in blocks)
    native = sum(b.native_k * b.tokens_seen for b in blocks)
    mean = assignments / tokens if tokens else float("nan")
    native_k = native / tokens if tokens else float("nan")
    return {
        "mean_experts": mean,
        "native_k": native_k,
        "expert_fraction": mean / native_k if tokens else float("nan"),
        "tokens": blocks[0].tokens_seen if blocks else 0,
        "per_layer": {
            (b.layer_index if b.layer_index is not None else b.layer_name): b.mean_experts()
            for b in blocks
        },
    }


def reset_routing_stats(model: nn.Module) -> None:
    """Zero every adapted block's experts-per-token counters.

    Example:
        >>> import torch
        >>> reset_routing_stats(torch.nn.Linear(2, 2))
    """
    for block in adapted_blocks(model):
        block.reset_stats()


def router_aux_loss(
    model: nn.Module,
    load_balance_weight: float = LOAD_BALANCE_WEIGHT,
    dynamic_weight: float = DYNAMIC_WEIGHT,
    z_loss_weight: float = 0.0,
) -> Tensor:
    """dynroute's router losses for the routing of the last training-mode forward.

    transformers' own aux loss (``output_router_logits=True``) assumes the model's
    fixed top-k. Under a dynamic router use this instead: the sum over adapted blocks of
    ``load_balance_weight · load_balance + dynamic_weight · dynamic + z_loss_weight · z``
    (:func:`dynroute.routing.losses.router_loss`; defaults: the paper's α = 1e-2,
    β = 1e-4), computed from the assignments each block actually made. Add it to the LM
    loss; leave ``output_router_logits`` off so the two are not both added.

    Returns:
        a scalar with gradient into every adapted gate.

    Raises:
        ValueError: no adapted block ran a forward in training mode with grad enabled.

    Example:
        >>> import torch
        >>> from transformers import OlmoeConfig, OlmoeForCausalLM
        >>> cfg = OlmoeConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
        ...     num_attention_heads=4, intermediate_size=16, num_experts=4, num_experts_per_tok=2)
        >>> model = apply_routing(OlmoeForCausalLM(cfg), "top_p", p=0.5).train()
        >>> ids = torch.randint(0, 64, (2, 8))
        >>> loss = model(ids, labels=ids).loss + router_aux_loss(model)
        >>> loss.backward()
    """
    pending = [b for b in adapted_blocks(model) if b.last_for_loss is not None]
    if not pending:
        raise ValueError(
            "router_aux_loss: no adapted block has routing from a training step; call "
            "model.train() and run a forward pass with gradients enabled first"
        )
    losses = [
        router_loss(
            b.last_for_loss[0],  # routing
            b.last_for_loss[1].float(),  # logits
            load_balance_weight,
            dynamic_weight,
            z_loss_weight,
            router=b.router,  # a router's own loss term (DynMoLE) counts too
        )
        for b in pending
    ]
    return torch.stack([loss["total"] for loss in losses]).sum()
