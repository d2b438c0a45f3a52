"""A small MoE causal language model built on ``transformers``.

Example:
    >>> import torch
    >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
    >>> model = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=1,
    ...                                        n_heads=2, d_ff=16, num_experts=4))
    >>> model(torch.zeros(1, 4, dtype=torch.long)).logits.shape
    torch.Size([1, 4, 32])
"""

from dynroute.models.config import DynMoEConfig
from dynroute.models.modeling import DynMoECausalLMOutput, DynMoEForCausalLM

__all__ = ["DynMoECausalLMOutput", "DynMoEConfig", "DynMoEForCausalLM"]
