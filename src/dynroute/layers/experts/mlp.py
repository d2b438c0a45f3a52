"""Plain two-layer MLP experts: act(x @ w1[e]) @ w2[e]; no fused path, the generic seam."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynroute.dispatch.gemm import grouped_linear
from dynroute.layers.experts.base import Experts
from dynroute.layers.experts.registry import register_experts


@register_experts("mlp")
class MLPExperts(Experts):
    """E MLP experts with stacked parameters, run as two grouped GEMMs.

    Expert kind ``"mlp"``: ``{"name": "mlp"}``, ``"mlp:d_ff=64,activation=relu"``.

    Args:
        d_model: model width; d_ff: hidden width; num_experts: E;
        activation: between the two layers: a function, or the name of one in
            ``torch.nn.functional`` (``"gelu"``, the default; ``"relu"``, ``"silu"``, ...).

    Attributes:
        w1: Parameter [E, d_model, d_ff]; w2: Parameter [E, d_ff, d_model].

    Shapes:
        rows [A, d_model] sorted by expert, offsets int32 [E] -> [A, d_model].

    Example:
        >>> import torch
        >>> experts = MLPExperts(8, 16, 4)
        >>> experts(torch.randn(5, 8), torch.tensor([2, 2, 4, 5], dtype=torch.int32)).shape
        torch.Size([5, 8])
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        num_experts: int,
        activation: Callable[[Tensor], Tensor] | str = "gelu",
    ) -> None:
        super().__init__(num_experts, d_model)
        self.d_ff, self.activation = d_ff, activation_function(activation)
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default scale, uniform ±1/sqrt(fan_in); fan_in is dim -2 for x @ W
        for w in (self.w1, self.w2):
            bound = 1 / math.sqrt(w.shape[-2])
            nn.init.uniform_(w, -bound, bound)

    def forward(self, rows: Tensor, offsets: Tensor) -> Tensor:
        h = self.activation(grouped_linear(rows, self.w1, offsets))
        return grouped_linear(h.contiguous(), self.w2, offsets)

    def run_expert(self, rows: Tensor, e: int) -> Tensor:
        return self.activation(rows @ self.w1[e]) @ self.w2[e]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_ff={self.d_ff}"


def activation_function(activation: Callable[[Tensor], Tensor] | str) -> Callable[[Tensor], Tensor]:
    """A function as is, or ``torch.nn.functional``'s function of that name.

    Example:
        >>> activation_function("relu") is F.relu, activation_function(F.gelu) is F.gelu
        (True, True)
    """
    if callable(activation):
        return activation
    fn = getattr(F, str(activation), None)
    if not callable(fn) or str(activation).startswith("_"):
        raise ValueError(
            f"mlp: unknown activation {activation!r}; name a function of "
            "torch.nn.functional (gelu, relu, silu, ...)"
        )
    return fn  # type: ignore[no-any-return]
