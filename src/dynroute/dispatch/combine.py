"""Scatter-add of per-assignment rows back to tokens, the last step of every dispatch.

``Tensor.index_add_`` is the obvious op, but on CPU it adds one row at a time and was
the most expensive op after the GEMMs in our profiles. A sparse [N, A] CSR combine
matrix times the rows runs one MKL call and folds the combine weights in for free;
it is used for float32/float64 on CPU, and ``index_put_(accumulate=True)`` elsewhere
(bf16 has no CPU sparse kernel).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


class Combiner:
    """Scatter-adds [A, d] rows (in assignment order) into [N, d] by token.

    Built once per dispatch call and reused in backward (the token sort is done once).

    Args:
        token: LongTensor [A], token of each assignment.
        num_tokens: N.
        index: ``index_tensors()`` of a Combiner over the same ``token`` (an autograd op
            saves them for backward instead of sorting again).

    Example:
        >>> import torch
        >>> c = Combiner(torch.tensor([1, 0, 1]), 2)
        >>> c(torch.ones(3, 4), torch.tensor([1.0, 2.0, 3.0]))[:, 0].tolist()
        [2.0, 4.0]
    """

    def __init__(
        self, token: Tensor, num_tokens: int, index: tuple[Tensor | None, ...] = (None, None)
    ) -> None:
        self.token, self.num_tokens = token, num_tokens
        self._order, self._crow = index

    def index_tensors(self) -> tuple[Tensor | None, Tensor | None]:
        """The token sort built so far (None before a sparse combine), for ``save_for_backward``."""
        return self._order, self._crow

    def _use_sparse(self, rows: Tensor) -> bool:
        return rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64)

    def _csr(self, values: Tensor) -> Tensor:
        if self._order is None:
            self._order = torch.argsort(self.token, stable=True)
            crow = self.token.new_zeros(self.num_tokens + 1)
            ones = torch.ones_like(self.token)
            crow[1:].scatter_add_(0, self.token, ones).cumsum_(0)  # bincount would sync
            self._crow = crow
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(
                self._crow,
                self._order,
                values[self._order],
                size=(self.num_tokens, self.token.shape[0]),
                check_invariants=False,
            )

    def __call__(self, rows: Tensor, scale: Tensor | None = None, inplace: bool = False) -> Tensor:
        """Σ over a token's assignments of scale[a] · rows[a] -> [N, d] (scale defaults to 1).

        With ``inplace=True`` ``rows`` may be overwritten (scaled in place where that saves a
        copy).
        """
        if self._use_sparse(rows):
            values = rows.new_ones(rows.shape[0]) if scale is None else scale.to(rows.dtype)
            # Under bf16 autocast `@` would cast to bf16, which has no sparse CPU kernel.
            with torch.autocast("cpu", enabled=False):
                return self._csr(values) @ rows
        if scale is not None:
            w = scale.to(rows.dtype)[:, None]
            rows = rows.mul_(w) if inplace else rows * w
        out = rows.new_zeros(self.num_tokens, rows.shape[1])
        return out.index_put_((self.token,), rows, accumulate=True)


def combine(rows: Tensor, token: Tensor, weight: Tensor, num_tokens: int) -> Tensor:
    """Σ over a token's assignments of weight[a] · rows[a] -> [N, d], under autograd.

    The combine step of every composed (non-fused) dispatch: gradients reach ``rows``
    and ``weight`` (the router).

    Example:
        >>> import torch
        >>> combine(torch.ones(3, 2), torch.tensor([1, 0, 1]), torch.tensor([1.0, 2.0, 3.0]), 2)
        tensor([[2., 2.],
                [4., 4.]])
    """
    y = rows * weight[:, None].to(rows.dtype)
    return rows.new_zeros(num_tokens, rows.shape[1]).index_add(0, token, y)
