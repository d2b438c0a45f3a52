"""Expert kinds: modules that own their math, ``experts(rows [A, d], offsets) -> [A, d]``.

``Experts`` is the seam (see docs/extending.md); ``SwiGLUExperts`` keeps a fused fast
path, ``MLPExperts`` is a plain two-layer MLP, ``MixedExperts`` puts experts of
different kinds or widths in one layer.

Example:
    >>> import torch
    >>> from dynroute.layers import MoE
    >>> moe = MoE(8, experts=MixedExperts([SwiGLUExperts(8, 32, 2), MLPExperts(8, 4, 2)]))
    >>> moe(torch.randn(3, 8))[0].shape
    torch.Size([3, 8])
"""

from dynroute.layers.experts.base import Experts
from dynroute.layers.experts.mixed import MixedExperts
from dynroute.layers.experts.mlp import MLPExperts
from dynroute.layers.experts.swiglu import LAYOUTS, SwiGLUExperts
from dynroute.layers.experts.swiglu_fused import PATHS, FusedSwiGLUDispatch, choose_path
from dynroute.layers.experts.swiglu_weights import ExpertWeights

__all__ = [
    "LAYOUTS",
    "PATHS",
    "ExpertWeights",
    "Experts",
    "FusedSwiGLUDispatch",
    "MLPExperts",
    "MixedExperts",
    "SwiGLUExperts",
    "choose_path",
]
