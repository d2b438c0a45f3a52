"""ScatterMoE (Tan et al., 2024) as a layer-suite implementation, when it is installed.

Its ``GLUMLP`` takes routing in top-k format (``expert_p``, ``expert_idxs`` [N, k]) and
fuses the gather and scatter into its Triton GEMMs. It keeps its own weights (same
shapes as ours, its own initialisation): the suite times it, it does not compare values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def scattermoe_layer(
    num_experts: int, d_model: int, d_ff: int, k: int, device: str, dtype: torch.dtype
) -> tuple[Callable[[Tensor, Tensor, Tensor], Tensor], list[Tensor]] | str:
    """``(fn(x, weight [N, k], index [N, k]) -> [N, d], its weights)``, or why it cannot run."""
    if torch.device(device).type != "cuda":
        return "skipped: ScatterMoE needs CUDA (Triton)"
    try:
        from scattermoe.mlp import GLUMLP  # type: ignore[import-not-found]
    except ImportError:
        return "skipped: scattermoe not installed"
    module = GLUMLP(d_model, d_ff, num_experts, k).to(device=device, dtype=dtype)
    return (lambda x, weight, index: module(x, weight, index)), list(module.parameters())
