"""Dynamic routing for transformers MoE models people already have.

One line turns a loaded Mixtral / Qwen-MoE / OLMoE / DeepSeek-V3 model into one that
routes with dynroute (and runs its experts through ``dynroute.dispatch.grouped``)::

    from dynroute.hf import apply_routing
    model = apply_routing(model, "top_p", p=0.5)      # or "top_k": the model's own routing

Example:
    >>> import torch
    >>> from transformers import MixtralConfig, MixtralForCausalLM
    >>> cfg = MixtralConfig(vocab_size=128, hidden_size=32, intermediate_size=16,
    ...     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
    ...     num_local_experts=4, num_experts_per_tok=2)
    >>> model = apply_routing(MixtralForCausalLM(cfg), "top_k")
    >>> _ = model(torch.randint(0, 128, (1, 6)))
    >>> routing_stats(model)["mean_experts"]
    2.0
"""

from dynroute.hf.apply import (
    CONFIG_KEY,
    adapted_blocks,
    apply_routing,
    remove_routing,
    reset_routing_stats,
    router_aux_loss,
    routing_config,
    routing_stats,
)
from dynroute.hf.block import DynamicMoEBlock, expert_weights
from dynroute.hf.calibrate import Calibration, calibrate_p
from dynroute.hf.evaluate import as_token_ids, evaluate_ids, evaluate_text
from dynroute.hf.families import (
    FAMILIES,
    Family,
    UnsupportedModelError,
    family_of,
    supported_families_text,
    supported_model_types,
)
from dynroute.hf.io import (
    CheckpointError,
    check_checkpoint,
    is_hf_moe_checkpoint,
    load_patched,
    load_tokenizer,
    reapply_routing,
    sample_texts,
    save_patched,
)
from dynroute.hf.routers import RouterSpec

__all__ = [
    "CONFIG_KEY",
    "FAMILIES",
    "Calibration",
    "CheckpointError",
    "DynamicMoEBlock",
    "Family",
    "RouterSpec",
    "UnsupportedModelError",
    "adapted_blocks",
    "apply_routing",
    "as_token_ids",
    "calibrate_p",
    "check_checkpoint",
    "evaluate_ids",
    "evaluate_text",
    "expert_weights",
    "family_of",
    "is_hf_moe_checkpoint",
    "load_patched",
    "load_tokenizer",
    "reapply_routing",
    "remove_routing",
    "reset_routing_stats",
    "router_aux_loss",
    "routing_config",
    "routing_stats",
    "sample_texts",
    "save_patched",
    "supported_families_text",
    "supported_model_types",
]
