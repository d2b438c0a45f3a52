"""Modules: the MoE block and its experts.

Example:
    >>> import torch
    >>> y, aux = MoE(8, 16, num_experts=4, router="top_k", k=2)(torch.randn(3, 8))
    >>> aux.mean_experts
    2.0
"""

from dynroute.layers.experts import SwiGLUExperts
from dynroute.layers.moe import MoE, MoEAux

__all__ = ["MoE", "MoEAux", "SwiGLUExperts"]
