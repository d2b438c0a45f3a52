"""Grouped GEMMs over rows sorted by expert: ``torch.nn.functional.grouped_mm`` or a slice loop.

Two shapes of grouped GEMM make up an MoE layer's forward and backward:

- ``grouped_linear(x [A, k], w [E, k, n], offs) -> [A, n]``: rows of expert e times ``w[e]``
  (forward projections and the input gradients);
- ``grouped_outer(a [A, k], b [A, n], offs) -> [E, k, n]``: ``a[rows of e].T @ b[rows of e]``
  for every expert (the weight gradients).

Both use ``grouped_mm`` where it accepts the operands and a loop over contiguous expert
slices where it does not (float64, strides that are not 16-byte multiples). The two
agree to float rounding; ``tests/dispatch`` checks it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HAS_GROUPED_MM = hasattr(F, "grouped_mm")


def grouped_mm_supported(x: Tensor, *weights: Tensor) -> bool:
    """Whether ``torch.nn.functional.grouped_mm`` accepts these operands.

    It needs float32/bf16/fp16 on CPU and bf16 on CUDA (all operands alike), one unit
    stride in the last two dims, and every other stride and the data pointer at 16-byte
    multiples.

    Example:
        >>> import torch
        >>> grouped_mm_supported(torch.zeros(2, 8), torch.zeros(3, 8, 8))
        True
        >>> grouped_mm_supported(torch.zeros(2, 6), torch.zeros(3, 6, 6))
        False
        >>> grouped_mm_supported(torch.zeros(4, 1), torch.zeros(3, 1, 8))  # rank-1 rows
        False
    """
    if not HAS_GROUPED_MM:
        return False
    if x.device.type == "cuda" and x.dtype != torch.bfloat16:
        return False  # the CUDA kernels are bf16-only on most torch versions
    if x.dtype != torch.bfloat16 and torch.compiler.is_compiling():
        return False  # torch.compile traces grouped_mm with its meta kernel: bf16 only
    for t in (x, *weights):
        if t.dtype not in _GROUPED_MM_DTYPES or t.dtype != x.dtype or t.device != x.device:
            return False
        size = t.element_size()
        inner = t.stride()[-2:]
        if min(inner) != 1:
            return False
        # the other matrix stride (the leading dimension) must be 16-byte aligned too, even
        # when it is 1 because a dim has size 1 (rank-1 LoRA: [A, 1] rows)
        if (max(inner) * size) % 16 or any((s * size) % 16 for s in t.stride()[:-2]):
            return False
        # under torch.compile there is no pointer to read (a graph break); torch's
        # allocators align every allocation, and the strides were checked above
        if not torch.compiler.is_compiling() and t.data_ptr() % 16:
            return False
    return True


def group_sizes(offs: Tensor) -> list[int]:
    """Rows per expert from cumulative offsets (one host sync; only the slice loop needs it).

    Example:
        >>> import torch
        >>> group_sizes(torch.tensor([2, 2, 5], dtype=torch.int32))
        [2, 0, 3]
    """
    return torch.diff(offs, prepend=offs.new_zeros(1)).tolist()


def grouped_linear(
    x: Tensor,
    w: Tensor,
    offs: Tensor,
    counts: list[int] | None = None,
    *,
    use_grouped_mm: bool | None = None,
) -> Tensor:
    """Rows x[offs[e-1]:offs[e]] @ w[e] for every expert e, as one grouped GEMM.

    Args:
        x: [A, k] rows sorted by expert; w: [E, k, n] (a transposed view is fine);
        offs: int32 [E] cumulative row counts, ``offs[-1] == A``;
        counts: rows per expert if already known on the host (saves a sync in the loop);
        use_grouped_mm: force (True) or forbid (False) ``grouped_mm``; None picks.

    Returns:
        [A, n].

    Example:
        >>> import torch
        >>> x, w = torch.ones(3, 8), torch.ones(2, 8, 4)
        >>> grouped_linear(x, w, torch.tensor([1, 3], dtype=torch.int32)).shape
        torch.Size([3, 4])
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    if use_grouped_mm is None:
        use_grouped_mm = grouped_mm_supported(x, w) and (
            # grouped_mm's own backward multiplies by the [A, n] output gradient: its rows
            # must be 16-byte multiples too (a 37-wide expert's are not)
            not needs_grad or (w.shape[-1] * x.element_size()) % 16 == 0
        )
    if use_grouped_mm:
        return F.grouped_mm(x, w, offs=offs)
    if torch.compiler.is_compiling():
        # torch.compile / torch.export cannot branch on the data-dependent group sizes:
        # the same slice loop runs as one opaque op (the eager path below is untouched)
        return grouped_linear_slices(x, w, offs)
    sizes = counts if counts is not None else group_sizes(offs)
    if needs_grad:
        # mm(out=...) has no autograd; experts composed under autograd need this form
        parts = [c @ w[e] for e, c in enumerate(x.split(sizes)) if c.shape[0]]
        return torch.cat(parts) if parts else x.new_zeros(0, w.shape[-1])
    return _linear_loop(x, w, sizes)


def _linear_loop(x: Tensor, w: Tensor, sizes: list[int]) -> Tensor:
    out = x.new_empty(x.shape[0], w.shape[-1])
    start = 0
    for e, size in enumerate(sizes):
        if size:
            torch.mm(x[start : start + size], w[e], out=out[start : start + size])
        start += size
    return out


def grouped_outer(
    a: Tensor,
    b: Tensor,
    offs: Tensor,
    counts: list[int] | None = None,
    *,
    use_grouped_mm: bool | None = None,
) -> Tensor:
    """Per-expert ``a[rows].T @ b[rows]``: the weight gradient of ``grouped_linear``.

    Args:
        a: [A, k]; b: [A, n], rows sorted by expert; offs: int32 [E] cumulative counts.

    Returns:
        [E, k, n]; experts with no rows get zeros.

    Example:
        >>> import torch
        >>> a, b = torch.ones(3, 4), torch.ones(3, 8)
        >>> grouped_outer(a, b, torch.tensor([0, 3], dtype=torch.int32))[:, 0, 0].tolist()
        [0.0, 3.0]
    """
    if use_grouped_mm is None:
        use_grouped_mm = grouped_mm_supported(a.t(), b)
    if use_grouped_mm:
        return F.grouped_mm(a.t(), b, offs=offs)
    if torch.compiler.is_compiling():
        return grouped_outer_slices(a, b, offs)
    sizes = counts if counts is not None else group_sizes(offs)
    return _outer_loop(a, b, sizes)


def _outer_loop(a: Tensor, b: Tensor, sizes: list[int]) -> Tensor:
    out = a.new_empty(len(sizes), a.shape[1], b.shape[1])
    start = 0
    for e, size in enumerate(sizes):
        if size:
            torch.mm(a[start : start + size].t(), b[start : start + size], out=out[e])
        else:
            out[e].zero_()
        start += size
    return out


# The slice loops as custom ops: torch.compile and torch.export see one opaque node with a
# shape-only fake kernel, instead of Python branches on data-dependent group sizes, so a
# model using them compiles with fullgraph=True and exports on CPU (where grouped_mm does
# not take float32 under compile). Inside, the eager loop runs: the same numbers.


@torch.library.custom_op("dynroute::grouped_linear_slices", mutates_args=())
def grouped_linear_slices(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """``grouped_linear``'s slice loop as one op that compile and export can trace.

    Example:
        >>> import torch
        >>> x, w = torch.ones(3, 8), torch.ones(2, 8, 4)
        >>> grouped_linear_slices(x, w, torch.tensor([1, 3], dtype=torch.int32))[:, 0].tolist()
        [8.0, 8.0, 8.0]
    """
    return _linear_loop(x, w, group_sizes(offs))


@grouped_linear_slices.register_fake
def _linear_slices_fake(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], w.shape[-1])


@torch.library.custom_op("dynroute::grouped_outer_slices", mutates_args=())
def grouped_outer_slices(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    """``grouped_outer``'s slice loop as one op that compile and export can trace.

    Example:
        >>> import torch
        >>> a, b = torch.ones(3, 4), torch.ones(3, 8)
        >>> offs = torch.tensor([0, 3], dtype=torch.int32)
        >>> grouped_outer_slices(a, b, offs)[:, 0, 0].tolist()
        [0.0, 3.0]
    """
    return _outer_loop(a, b, group_sizes(offs))


@grouped_outer_slices.register_fake
def _outer_slices_fake(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    return a.new_empty(offs.shape[0], a.shape[1], b.shape[1])


def _linear_slices_setup(ctx: object, inputs: tuple[Tensor, ...], output: Tensor) -> None:
    ctx.save_for_backward(*inputs)  # type: ignore[attr-defined]


def _linear_slices_backward(ctx: object, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, w, offs = ctx.saved_tensors  # type: ignore[attr-defined]
    need_x, need_w, _ = ctx.needs_input_grad  # type: ignore[attr-defined]
    grad = grad.contiguous()
    d_x = grouped_linear_slices(grad, w.transpose(1, 2), offs) if need_x else None
    d_w = grouped_outer_slices(x, grad, offs) if need_w else None
    return d_x, d_w, None


grouped_linear_slices.register_autograd(_linear_slices_backward, setup_context=_linear_slices_setup)
