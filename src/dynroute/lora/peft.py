"""Converters between a ``peft`` LoRA and our single-expert LoRA layers.

A peft LoRA on a linear computes ``base(x) + lora_B(lora_A(x)) · scaling`` with
``lora_A.weight [r, d_in]``, ``lora_B.weight [d_out, r]`` and ``scaling = lora_alpha / r``.
Our ``LoRAMoELinear`` with one expert and ``router="top_k", k=1`` computes
``base(x) + x @ A[0] @ B[0] · alpha/r`` with ``A [1, d_in, r]``, ``B [1, r, d_out]``: the same
function when ``A[0] = lora_A.weightᵀ`` and ``B[0] = lora_B.weightᵀ`` (tested for outputs and
gradients against peft). So one can start from a trained peft adapter
(:func:`from_peft`, then e.g. grow more experts or merge) or export ours to peft
(:func:`to_peft_state_dict` with ``peft.set_peft_model_state_dict``) to compare.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dynroute.lora.apply import add_lora_experts
from dynroute.lora.experts import LoRAExperts
from dynroute.lora.layer import lora_layers

__all__ = ["from_peft", "to_peft_state_dict"]


def _peft_lora_linears(model: nn.Module) -> dict[str, Any]:
    return {
        n: m
        for n, m in model.named_modules()
        if hasattr(m, "lora_A") and hasattr(m, "base_layer") and hasattr(m, "scaling")
    }


def from_peft(peft_model: nn.Module, adapter: str | None = None) -> nn.Module:
    """The base model of a peft LoRA with each LoRA linear as our single-expert layer.

    Every peft ``lora.Linear`` becomes a ``LoRAMoELinear(base, num_experts=1, rank=r,
    router="top_k", k=1)`` with the same weights: the outputs are peft's (dropout aside,
    which only acts in training; we have none). The result is an ordinary
    ``add_lora_experts`` model: ``save_lora_experts``, ``merge_lora_experts`` work on it.

    Args:
        peft_model: a ``PeftModel`` (from ``get_peft_model`` / ``PeftModel.from_pretrained``)
            or its base model with peft LoRA layers injected. Modified in place: use a copy
            to keep the peft model.
        adapter: which adapter (default: the active one, or the only one).

    Returns:
        the underlying base model (``peft_model.get_base_model()``), adapters trainable,
        the rest frozen.

    Raises:
        ValueError: no LoRA linears, DoRA, a LoRA bias, or ranks/alphas differing between
            layers (``rank_pattern``/``alpha_pattern``; ours have one r and alpha per model).
    """
    model = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    found = _peft_lora_linears(model)
    if not found:
        raise ValueError(f"from_peft: {type(peft_model).__name__} has no peft LoRA linears")
    weights: dict[str, tuple[Tensor, Tensor]] = {}
    shapes: set[tuple[int, float]] = set()
    for name, m in found.items():
        key = adapter or (m.active_adapters[0] if m.active_adapters else next(iter(m.lora_A)))
        if key not in m.lora_A:
            raise ValueError(f"from_peft: {name} has no adapter {key!r} ({list(m.lora_A)})")
        if getattr(m, "use_dora", {}).get(key, False):
            raise ValueError(f"from_peft: {name} uses DoRA, which is not a plain LoRA")
        if getattr(m.lora_B[key], "bias", None) is not None:
            raise ValueError(f"from_peft: {name} has a LoRA bias (lora_bias=True)")
        if not isinstance(m.base_layer, nn.Linear):
            raise ValueError(f"from_peft: {name} wraps a {type(m.base_layer).__name__}")
        a, b = m.lora_A[key].weight, m.lora_B[key].weight  # [r, d_in], [d_out, r]
        rank = a.shape[0]
        shapes.add((rank, float(m.scaling[key]) * rank))  # our alpha: scale = alpha / r
        weights[name] = (a.detach().t(), b.detach().t())
        model.set_submodule(name, m.base_layer)
    if len(shapes) != 1:
        raise ValueError(f"from_peft: layers differ in (rank, alpha): {sorted(shapes)}")
    (rank, alpha) = shapes.pop()
    add_lora_experts(model, list(found), num_experts=1, rank=rank, alpha=alpha,
                     router="top_k", k=1)  # fmt: skip
    layers = lora_layers(model)
    with torch.no_grad():
        for name, (a, b) in weights.items():
            experts = layers[name].experts
            experts.A[0].copy_(a)  # type: ignore[index]
            experts.B[0].copy_(b)  # type: ignore[index]
    return model


def to_peft_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Our single-expert LoRA layers as a peft LoRA state dict (peft's key names).

    Keys are ``base_model.model.<module>.lora_A.weight`` ``[r, d_in]`` and ``...lora_B.weight``
    ``[d_out, r]``, what ``peft.get_peft_model_state_dict`` returns; load them with
    ``peft.set_peft_model_state_dict(get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha,
    target_modules=[...])), state)`` (or write them as ``adapter_model.safetensors``).

    Raises:
        ValueError: a layer with more than one expert or non-LoRA experts (a mixture is not
            one peft LoRA).

    Example:
        >>> model = nn.Sequential()
        >>> model.add_module("q_proj", nn.Linear(8, 6))
        >>> _ = add_lora_experts(model, ["q_proj"], num_experts=1, rank=2, router="top_k", k=1)
        >>> {k: tuple(v.shape) for k, v in to_peft_state_dict(model).items()}
        {'base_model.model.q_proj.lora_A.weight': (2, 8), 'base_model.model.q_proj.lora_B.weight': (6, 2)}
    """  # noqa: E501
    layers = lora_layers(model)
    if not layers:
        raise ValueError("to_peft_state_dict: the model has no LoRA experts")
    out: dict[str, Tensor] = {}
    for name, layer in layers.items():
        experts = layer.experts
        if not isinstance(experts, LoRAExperts) or experts.num_experts != 1:
            raise ValueError(
                f"to_peft_state_dict: {name} has {experts.num_experts} "
                f"{type(experts).__name__}; peft holds one plain LoRA (num_experts=1)"
            )
        prefix = f"base_model.model.{name}"
        out[f"{prefix}.lora_A.weight"] = experts.A[0].detach().t().contiguous()
        out[f"{prefix}.lora_B.weight"] = experts.B[0].detach().t().contiguous()
    return out
