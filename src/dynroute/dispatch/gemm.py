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
    if use_grouped_mm is None:
        use_grouped_mm = grouped_mm_supported(x, w)
    if use_grouped_mm:
        return F.grouped_mm(x, w, offs=offs)
    sizes = counts if counts is not None else group_sizes(offs)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        # mm(out=...) has no autograd; experts composed under autograd need this form
        parts = [c @ w[e] for e, c in enumerate(x.split(sizes)) if c.shape[0]]
        return torch.cat(parts) if parts else x.new_zeros(0, w.shape[-1])
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
    sizes = counts if counts is not None else group_sizes(offs)
    out = a.new_empty(len(sizes), a.shape[1], b.shape[1])
    start = 0
    for e, size in enumerate(sizes):
        if size:
            torch.mm(a[start : start + size].t(), b[start : start + size], out=out[e])
        else:
            out[e].zero_()
        start += size
    return out
