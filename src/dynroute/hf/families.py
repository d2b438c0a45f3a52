"""The transformers MoE families dynroute can adapt, and each family's own routing rule.

A family is recognised by the class name of its sparse block (``MixtralSparseMoeBlock``,
``DeepseekV3MoE``, ...), so subclasses and renamed model wrappers are found too. Each
family knows two things about its router (``block.gate``):

* how its raw logits [N, E] turn into *selection logits* whose softmax ranks experts the
  way the model does (softmax families: the logits themselves; DeepSeek-V3-style sigmoid
  routers: the log of the bias-corrected scores, with groups outside the top
  ``topk_group`` masked out), and
* how the model weights a chosen (token, expert) pair (softmax probability or sigmoid
  score, renormalised over the token's kept experts when the model does so, times
  ``routed_scaling_factor``).

Any selection rule (top-k, top-p, null experts) composed with those two reproduces the
model's own routing for top-k at its own k, and gives the closest dynamic analogue
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FAMILIES",
    "Family",
    "UnsupportedModelError",
    "family_of",
    "supported_families_text",
]

# A finite stand-in for -inf: dynroute's routers reject non-finite logits, and
# softmax of -1e4 below the max is exactly 0 in float32.
MASKED_LOGIT = -1.0e4
_TINY = 1e-20


class UnsupportedModelError(ValueError):
    """The model has no sparse MoE block of a family dynroute can adapt."""


def _softmax_normalizes(gate: nn.Module) -> bool:
    # Mixtral's router has no flag: it always renormalises its top-k.
    return bool(getattr(gate, "norm_topk_prob", True))


def _no_shared(block: nn.Module, x: Tensor) -> Tensor | None:
    return None


def _gated_shared(block: nn.Module, x: Tensor) -> Tensor:
    # Qwen2-MoE / Qwen3-Next: one shared expert scaled by sigmoid(gate(x)).
    return F.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)


def _ungated_shared(block: nn.Module, x: Tensor) -> Tensor:
    # DeepSeek-V3 / GLM-4-MoE: shared experts added as they are.
    return block.shared_experts(x)


@dataclass(frozen=True)
class Family:
    """One transformers MoE family: its block classes and its routing rule.

    Attributes:
        name: short name used in messages and docs ("mixtral").
        title: human-readable name ("Mixtral").
        model_types: ``config.model_type`` values of checkpoints of this family.
        block_classes: class names of the family's sparse MoE block.
        scoring: "softmax" or "sigmoid_grouped" (DeepSeek-V3 style).
        shared: callable ``(block, x [N, H]) -> [N, H] | None`` for shared experts.
    """

    name: str
    title: str
    model_types: tuple[str, ...]
    block_classes: tuple[str, ...]
    scoring: str
    shared: Callable[[nn.Module, Tensor], Tensor | None]

    def native_k(self, gate: nn.Module) -> int:
        """The model's own experts per token."""
        return int(gate.top_k)

    def normalizes(self, gate: nn.Module) -> bool:
        """Whether the model renormalises the kept weights of a token to sum to 1."""
        return _softmax_normalizes(gate)

    def scale(self, gate: nn.Module) -> float:
        """Factor applied to every routed weight (``routed_scaling_factor``, else 1)."""
        return float(getattr(gate, "routed_scaling_factor", 1.0) or 1.0)

    def scores(self, gate: nn.Module, logits: Tensor) -> Tensor:
        """float32 [N, E]: the per-(token, expert) weight before renormalisation."""
        if self.scoring == "softmax":
            return torch.softmax(logits.float(), dim=-1)
        return logits.float().sigmoid()

    def selection_logits(self, gate: nn.Module, logits: Tensor) -> Tensor:
        """float32 [N, E] logits whose softmax ranks experts as the model's router does.

        Softmax families: the logits. Sigmoid families: ``log(sigmoid(l) + bias)`` with
        experts outside the model's top ``topk_group`` groups masked, so that top-k of
        these logits is exactly the model's group-limited, bias-corrected top-k.
        """
        logits = logits.float()
        if self.scoring == "softmax":
            return logits
        choice = logits.sigmoid() + gate.e_score_correction_bias.float()
        n, e = choice.shape
        groups = int(gate.num_group)
        group_scores = choice.view(n, groups, e // groups).topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = torch.topk(group_scores, k=int(gate.topk_group), dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, group_idx, True)
        expert_mask = group_mask.repeat_interleave(e // groups, dim=1)
        # A negative bias-corrected score can only rank last; clamping keeps the log finite.
        sel = choice.clamp_min(_TINY).log()
        return sel.masked_fill(~expert_mask, MASKED_LOGIT)


_SOFTMAX, _SIGMOID = "softmax", "sigmoid_grouped"

# every family: model_type = its name, one sparse block class
FAMILIES: tuple[Family, ...] = tuple(
    Family(name, title, (name,), (block,), scoring, shared)
    for name, title, block, scoring, shared in (
        ("mixtral", "Mixtral", "MixtralSparseMoeBlock", _SOFTMAX, _no_shared),
        ("qwen2_moe", "Qwen2-MoE", "Qwen2MoeSparseMoeBlock", _SOFTMAX, _gated_shared),
        ("qwen3_moe", "Qwen3-MoE", "Qwen3MoeSparseMoeBlock", _SOFTMAX, _no_shared),
        ("qwen3_next", "Qwen3-Next", "Qwen3NextSparseMoeBlock", _SOFTMAX, _gated_shared),
        ("olmoe", "OLMoE", "OlmoeSparseMoeBlock", _SOFTMAX, _no_shared),
        ("deepseek_v3", "DeepSeek-V3", "DeepseekV3MoE", _SIGMOID, _ungated_shared),
        ("glm4_moe", "GLM-4-MoE (DeepSeek-V3 routing)", "Glm4MoeMoE", _SIGMOID, _ungated_shared),
    )
)

_BY_CLASS = {cls: fam for fam in FAMILIES for cls in fam.block_classes}


def family_of(module: nn.Module) -> Family | None:
    """The family whose sparse block ``module`` is (by class name, MRO included), or None.

    Example:
        >>> import torch
        >>> family_of(torch.nn.Linear(2, 2)) is None
        True
    """
    for cls in type(module).__mro__:
        if cls.__name__ in _BY_CLASS:
            return _BY_CLASS[cls.__name__]
    return None


def supported_families_text() -> str:
    """One line listing the supported families and their ``model_type``.

    Example:
        >>> "Mixtral (mixtral)" in supported_families_text()
        True
    """
    return ", ".join(f"{f.title} ({'/'.join(f.model_types)})" for f in FAMILIES)


def supported_model_types() -> set[str]:
    """Every ``config.model_type`` dynroute.hf can adapt.

    Example:
        >>> "olmoe" in supported_model_types()
        True
    """
    return {t for f in FAMILIES for t in f.model_types}
