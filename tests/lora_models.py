"""Tiny bases for tests/lora (kept out of tests/lora: benchmarks/lora.py is module `lora`)."""

from __future__ import annotations

import torch
import transformers
from torch import nn

from dynroute.models import DynMoEConfig, DynMoEForCausalLM


def tiny_dynmoe(seed: int = 0) -> DynMoEForCausalLM:
    torch.manual_seed(seed)
    config = DynMoEConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=32, num_experts=4,
        router="top_p", p=0.5, max_seq_len=32,
    )  # fmt: skip
    return DynMoEForCausalLM(config).eval()


def tiny_hf(family: str, seed: int = 0) -> nn.Module:
    """A tiny random ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` built from a config."""
    common = dict(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    cfg, cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    torch.manual_seed(seed)
    return cls(cfg(**common)).eval()


def randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter non-zero B (trained-looking), so outputs differ from the base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
