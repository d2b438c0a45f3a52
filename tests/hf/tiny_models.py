"""Tiny random transformers MoE models of every supported family, built from configs."""

from __future__ import annotations

import string

import torch
import transformers
from torch import nn

COMMON = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
COMMON["num_key_value_heads"] = 2
MLA = dict(kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)

# (config class, model class, kwargs): hidden 32, 2 layers, 8 experts, top-2, vocab 128.
TINY: dict[str, tuple[str, str, dict]] = {
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        dict(COMMON, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2),
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            COMMON,
            intermediate_size=64,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            num_experts=8,
            num_experts_per_tok=2,
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            COMMON,
            intermediate_size=64,
            moe_intermediate_size=16,
            num_experts=8,
            num_experts_per_tok=2,
            head_dim=8,
            norm_topk_prob=True,  # as in the released Qwen3 checkpoints
        ),
    ),
    "olmoe": (
        "OlmoeConfig",
        "OlmoeForCausalLM",
        dict(
            COMMON,
            intermediate_size=16,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            eos_token_id=1,
            pad_token_id=0,
        ),
    ),
    "deepseek_v3": (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        dict(
            COMMON,
            **MLA,
            num_key_value_heads=4,
            intermediate_size=64,
            moe_intermediate_size=16,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_shared_experts=1,
            n_group=4,
            topk_group=2,
            first_k_dense_replace=0,
            routed_scaling_factor=2.5,
        ),
    ),
    "glm4_moe": (
        "Glm4MoeConfig",
        "Glm4MoeForCausalLM",
        dict(
            COMMON,
            intermediate_size=64,
            moe_intermediate_size=16,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_shared_experts=1,
            n_group=2,
            topk_group=1,
            first_k_dense_replace=1,
            head_dim=8,
        ),
    ),
    "qwen3_next": (
        "Qwen3NextConfig",
        "Qwen3NextForCausalLM",
        dict(
            COMMON,
            intermediate_size=64,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
            num_experts=8,
            num_experts_per_tok=2,
            head_dim=8,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            layer_types=["linear_attention", "full_attention"],
        ),
    ),
}

FAMILY_NAMES = list(TINY)
WITH_AUX_LOSS = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "qwen3_next"}


def build_tiny(family: str, seed: int = 0, **overrides: object) -> nn.Module:
    """A tiny random model whose routing matters.

    transformers initialises with std 0.02, which makes router logits ~0 (uniform routing)
    and expert outputs negligible; re-drawing weights at ~1/sqrt(fan_in) makes a wrong
    routing visible in the logits.
    """
    cfg_name, model_name, kwargs = TINY[family]
    config = getattr(transformers, cfg_name)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 1.0 / param.shape[-1] ** 0.5)
            if name.endswith("gate.weight"):
                param.mul_(3.0)  # peaked router distributions, like trained ones
        for module in model.modules():
            bias = getattr(module, "e_score_correction_bias", None)
            if isinstance(bias, torch.Tensor):
                bias.normal_(0.0, 0.1)
    return model.eval()


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A character-level tokenizer with < 128 ids, to ship inside tiny model folders."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    chars = sorted(set(string.printable) - {"\x0b", "\x0c"})
    vocab = {"<unk>": 0, "<eos>": 1} | {c: i + 2 for i, c in enumerate(chars)}
    assert len(vocab) <= 128
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<unk>"
    )
