"""Mixtures of LoRA experts on a frozen base model (MoLE, DynMoLE, SMoRA).

Each target ``nn.Linear`` becomes ``base(x) + Σ_e w_e(x) · B_e A_e x · alpha/r``: the base
frozen, adapters routed per token by any dynroute router and run by the same dispatch
paths as MoE experts. See ``docs/lora.md``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential()
    >>> model.add_module("q_proj", nn.Linear(8, 8))
    >>> _ = add_lora_experts(model, ["q_proj"], num_experts=4, rank=2, router="top_p", p=0.5)
    >>> y = model(torch.randn(3, 8))
    >>> lora_aux_loss(model).shape, trainable_parameters(model)
    (torch.Size([]), 160)
"""

from dynroute.lora.apply import (
    DEFAULT_TARGETS,
    add_lora_experts,
    load_lora_experts,
    merge_lora_experts,
    read_lora_config,
    save_lora_experts,
    trainable_parameters,
)
from dynroute.lora.experts import LoRAExperts
from dynroute.lora.layer import LoRAMoELinear, lora_aux_loss, lora_layers
from dynroute.lora.peft import from_peft, to_peft_state_dict
from dynroute.lora.smora import SMoRAExperts

__all__ = [
    "DEFAULT_TARGETS",
    "LoRAExperts",
    "LoRAMoELinear",
    "SMoRAExperts",
    "add_lora_experts",
    "from_peft",
    "load_lora_experts",
    "lora_aux_loss",
    "lora_layers",
    "merge_lora_experts",
    "read_lora_config",
    "save_lora_experts",
    "to_peft_state_dict",
    "trainable_parameters",
]
