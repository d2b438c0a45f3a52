"""SwiGLU experts over plain tensors: the math of ``SwiGLUExperts`` and of transformers'
stacked experts (views, no copy), in both layouts, and the choice of execution path
(``choose_path``; the paths and the fused op are in ``swiglu_fused.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dynroute.dispatch.gemm import group_sizes, grouped_linear, grouped_mm_supported
from dynroute.layers.experts.swiglu_fused import (
    PATHS,
    SMALL_FORWARD,
    FusedSwiGLUDispatch,
    is_silu,
)

if TYPE_CHECKING:
    from dynroute.routing import Routing


#: One [E, ...] tensor, or one tensor per expert (the "per_expert" layout).
ExpertTensors = Tensor | tuple[Tensor, ...]


class ExpertWeights(NamedTuple):
    """SwiGLU expert weights, laid out for ``x @ W``: stacked, or one tensor per expert.

    Attributes:
        gate_up: [E, d_model, 2·d_ff] (or a tuple of E [d_model, 2·d_ff] tensors);
            columns [:d_ff] are the gate, [d_ff:] the up projection.
        down: [E, d_ff, d_model] (or a tuple of E [d_ff, d_model] tensors).
        activation: applied to the gate half (SiLU for SwiGLU).

    A transposed view of transformers' [E, 2·d_ff, d_model] / [E, d_model, d_ff]
    weights is accepted as is (``w.transpose(1, 2)``); nothing is copied.

    Stacked weights feed grouped GEMMs; their gradient is one [E, ...] tensor however
    few experts ran. Per-expert tensors (tuples) give gradients only to the experts
    that received tokens: cheaper backward for small batches (see docs/performance.md).

    Example:
        >>> import torch
        >>> w = ExpertWeights(torch.zeros(4, 8, 32), torch.zeros(4, 16, 8))
        >>> w.num_experts, w.d_model, w.d_ff, w.per_expert
        (4, 8, 16, False)
        >>> ExpertWeights(tuple(w.gate_up), tuple(w.down)).per_expert
        True
    """

    gate_up: ExpertTensors
    down: ExpertTensors
    activation: Callable[[Tensor], Tensor] = F.silu

    @property
    def per_expert(self) -> bool:
        """Whether the weights are one tensor per expert (tuples) rather than stacked."""
        return isinstance(self.gate_up, tuple | list)

    @property
    def num_experts(self) -> int:
        return len(self.gate_up)

    @property
    def d_model(self) -> int:
        return self.gate_up[0].shape[0]

    @property
    def d_ff(self) -> int:
        return self.down[0].shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.gate_up[0].dtype

    def tensors(self) -> tuple[Tensor, ...]:
        """Every weight tensor: (gate_up, down) stacked, all per-expert tensors otherwise.

        Example:
            >>> import torch
            >>> w = ExpertWeights(torch.zeros(4, 8, 32), torch.zeros(4, 16, 8))
            >>> len(w.tensors()), len(ExpertWeights(tuple(w.gate_up), tuple(w.down)).tensors())
            (2, 8)
        """
        if self.per_expert:
            return (*self.gate_up, *self.down)
        return (self.gate_up, self.down)  # type: ignore[return-value]

    def stacked(self) -> ExpertWeights:
        """The same weights as stacked [E, ...] tensors (a copy for per-expert weights).

        Example:
            >>> import torch
            >>> w = ExpertWeights((torch.zeros(8, 32),) * 4, (torch.zeros(16, 8),) * 4)
            >>> w.stacked().gate_up.shape
            torch.Size([4, 8, 32])
        """
        if not self.per_expert:
            return self
        return ExpertWeights(torch.stack(self.gate_up), torch.stack(self.down), self.activation)

    def glu(self, gate_up_out: Tensor) -> Tensor:
        """activation(gate) * up for a [..., 2·d_ff] projection."""
        gate, up = gate_up_out.chunk(2, dim=-1)
        return self.activation(gate) * up

    def ffn(self, x: Tensor, e: int) -> Tensor:
        """Expert e on rows x [n, d_model] -> [n, d_model]."""
        return self.glu(x @ self.gate_up[e]) @ self.down[e]

    run_expert = ffn

    def __call__(self, rows: Tensor, offsets: Tensor) -> Tensor:  # type: ignore[override]
        """SwiGLU under autograd on rows [A, d] sorted by expert -> [A, d].

        Example:
            >>> import torch
            >>> w = ExpertWeights(torch.randn(2, 8, 32), torch.randn(2, 16, 8))
            >>> w(torch.randn(3, 8), torch.tensor([1, 3], dtype=torch.int32)).shape
            torch.Size([3, 8])
        """
        if self.per_expert:
            # experts with no rows never touch their weights, so they get no gradient at all
            chunks = rows.split(group_sizes(offsets))
            parts = [self.ffn(c, e) for e, c in enumerate(chunks) if c.shape[0]]
            return torch.cat(parts) if parts else rows.new_zeros(rows.shape)
        h = self.glu(grouped_linear(rows, self.gate_up, offsets))  # type: ignore[arg-type]
        return grouped_linear(h.contiguous(), self.down, offsets)  # type: ignore[arg-type]

    def fused(self, x: Tensor, routing: Routing, path: str) -> Tensor | None:
        """The fused SwiGLU dispatch for ``grouped``; None where the composed path is taken."""
        return fused_swiglu(x, routing, self, path)


def choose_path(x: Tensor, experts: ExpertWeights) -> str:
    """The execution path ``grouped(..., path="auto")`` takes for these SwiGLU weights.

    Example:
        >>> import torch
        >>> from dynroute.layers.experts import ExpertWeights
        >>> w = ExpertWeights(torch.randn(4, 8, 32), torch.randn(4, 16, 8))
        >>> choose_path(torch.randn(5, 8), w), choose_path(torch.randn(5, 8).double(), w)
        ('grouped_mm', 'slices')
        >>> choose_path(torch.randn(5, 8), ExpertWeights(tuple(w.gate_up), tuple(w.down)))
        'per_expert'
    """
    if experts.per_expert:
        return "per_expert"
    if not is_silu(experts.activation):
        return "autograd"
    gate_up, down = experts.gate_up, experts.down
    gu_t, down_t = gate_up.transpose(1, 2), down.transpose(1, 2)  # type: ignore[union-attr]
    # the [A, d] and [A, f] activations are operands too: their row strides must align
    row_bytes = (experts.d_model * x.element_size(), experts.d_ff * x.element_size())
    aligned = all(b % 16 == 0 for b in row_bytes)
    if aligned and grouped_mm_supported(x, gate_up, down, gu_t, down_t):  # type: ignore[arg-type]
        return "grouped_mm"
    return "slices"


def fused_swiglu(x: Tensor, routing: Routing, experts: ExpertWeights, path: str) -> Tensor | None:
    """Run :class:`FusedSwiGLUDispatch` for ``path`` (see ``swiglu_fused.py``), or None for the
    composed path.

    None tells ``grouped`` to take the generic composed path (per-expert weights, other
    activations, small forward-only calls). Raises for a path that cannot take the weights.
    """
    if path not in PATHS:
        raise ValueError(f"grouped: unknown path {path!r}; choose one of {', '.join(PATHS)}")
    if path == "auto":
        path = choose_path(x, experts)
        if path != "per_expert" and routing.num_assignments <= SMALL_FORWARD:
            # a decoding-size call: the fused op's fixed cost (sparse combine, autograd
            # bookkeeping) is a visible share of a few rows' GEMMs; nothing to save for backward
            inputs = (x, routing.weight, experts.gate_up, experts.down)
            if not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):  # type: ignore[union-attr]
                path = "autograd"
    elif (path == "per_expert") != experts.per_expert:
        raise ValueError(
            f"grouped: path {path!r} does not fit "
            f"{'per-expert' if experts.per_expert else 'stacked'} weights; "
            "'per_expert' is the path for per-expert weights; use path='auto'"
        )
    elif path not in ("autograd", "per_expert") and not is_silu(experts.activation):
        raise ValueError(f"grouped: path {path!r} is fused SwiGLU with SiLU; use path='autograd'")
    elif path == "grouped_mm" and choose_path(x, experts) != "grouped_mm":
        raise ValueError(
            "grouped: grouped_mm cannot take these operands (needs float32/bf16/fp16 and "
            "16-byte aligned strides); use path='slices' or 'auto'"
        )
    if path in ("autograd", "per_expert"):
        return None
    offs = routing.expert_offsets()
    use_grouped_mm = path == "grouped_mm"
    # the slice loop needs rows per expert as Python ints: read them once (one host sync)
    # for the forward and backward GEMMs; grouped_mm takes the offsets on the device
    counts = None if use_grouped_mm else group_sizes(offs)
    return FusedSwiGLUDispatch.apply(
        x,
        routing.weight,
        experts.gate_up,
        experts.down,
        routing.token,
        offs,
        counts,
        use_grouped_mm,
    )
