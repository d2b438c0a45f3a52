"""Expert kinds: modules that own their math, ``experts(rows [A, d], offsets) -> [A, d]``.

``Experts`` is the seam (see docs/extending.md). Kinds register by name with
``@register_experts("name")`` and are built from ``"name:key=value"`` or
``{"name": ..., **params}`` by :func:`make_experts` (``MoE(experts=...)``, the model
config's ``experts``). Built in: ``swiglu`` (``SwiGLUExperts``, the default, with a fused
fast path), ``mlp`` (``MLPExperts``, a plain two-layer MLP) and ``mixed``
(``MixedExperts``: experts of different kinds or widths in one layer). Every module of
this package is imported on the first lookup of an unknown name, then the plugins
(``DYNROUTE_PLUGINS``).

Example:
    >>> import torch
    >>> from dynroute.layers import MoE
    >>> moe = MoE(8, experts=MixedExperts([SwiGLUExperts(8, 32, 2), MLPExperts(8, 4, 2)]))
    >>> moe(torch.randn(3, 8))[0].shape
    torch.Size([3, 8])
    >>> EXPERT_KINDS["mlp"] is MLPExperts, make_experts("mlp", d_model=8, d_ff=4, num_experts=2)
    (True, MLPExperts(num_experts=2, d_model=8, d_ff=4))
"""

from dynroute.layers.experts.base import Experts
from dynroute.layers.experts.mixed import MixedExperts
from dynroute.layers.experts.mlp import MLPExperts
from dynroute.layers.experts.registry import (
    EXPERT_KINDS,
    ExpertsSpec,
    check_experts_spec,
    make_experts,
    register_experts,
)
from dynroute.layers.experts.swiglu import LAYOUTS, SwiGLUExperts
from dynroute.layers.experts.swiglu_fused import PATHS, FusedSwiGLUDispatch
from dynroute.layers.experts.swiglu_weights import ExpertWeights, choose_path

__all__ = [
    "EXPERT_KINDS",
    "LAYOUTS",
    "PATHS",
    "ExpertWeights",
    "Experts",
    "ExpertsSpec",
    "FusedSwiGLUDispatch",
    "MLPExperts",
    "MixedExperts",
    "SwiGLUExperts",
    "check_experts_spec",
    "choose_path",
    "make_experts",
    "register_experts",
]
