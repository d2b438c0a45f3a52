"""Adaptive computation per token and layer (Duo-LLM): big module, small module or skip.

Three stages (see docs/adaptive.md): train with random routing
(:class:`AdaptiveForCausalLM`, ``routing="random"``); search the best routing pattern per
token under a budget of big layers (:mod:`dynroute.adaptive.oracle`); train linear
routers with a global budget loss (``routing="router"``) and compare.

Example:
    >>> import torch
    >>> cfg = AdaptiveConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, d_ff=32)
    >>> AdaptiveForCausalLM(cfg)(torch.zeros(1, 4, dtype=torch.long)).logits.shape
    torch.Size([1, 4, 32])
"""

from transformers import AutoConfig, AutoModelForCausalLM

from dynroute.adaptive.config import BIG, ROUTINGS, SKIP, SMALL, AdaptiveConfig
from dynroute.adaptive.model import AdaptiveFFN, AdaptiveForCausalLM, AdaptiveOutput, budget_loss
from dynroute.checkpoints import register_model_type

# So that transformers' Auto* classes open saved adaptive models too, and dynroute's loader
# (which finds this package through its `dynroute.plugins` entry point in pyproject.toml).
AutoConfig.register(AdaptiveConfig.model_type, AdaptiveConfig, exist_ok=True)
AutoModelForCausalLM.register(AdaptiveConfig, AdaptiveForCausalLM, exist_ok=True)
register_model_type(AdaptiveForCausalLM)

__all__ = [
    "BIG",
    "ROUTINGS",
    "SKIP",
    "SMALL",
    "AdaptiveConfig",
    "AdaptiveFFN",
    "AdaptiveForCausalLM",
    "AdaptiveOutput",
    "budget_loss",
]
