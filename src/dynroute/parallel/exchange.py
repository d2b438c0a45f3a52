"""How rows travel between ranks: one seam for the flat and the hierarchical all-to-all.

An :class:`Exchange` starts a variable-size all-to-all of rows and returns a
:class:`PendingExchange`; ``wait()`` returns the received rows. Nothing here records
autograd: the pipelined expert-parallel layer wraps ``start``/``wait`` in autograd
functions (the backward runs the same exchange with the splits swapped), so every
exchange, flat or hierarchical, gets the same overlap and the same gradients.

Semantics (every implementation): rank r sends ``x`` cut into ``in_splits`` consecutive
blocks (block j to rank j) and receives ``out_splits[j]`` rows from rank j, concatenated
in rank order — exactly ``dist.all_to_all_single(out, x, out_splits, in_splits)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch.distributed as dist
from torch import Tensor

Group = dist.ProcessGroup | None


class PendingExchange(Protocol):
    """An exchange in flight."""

    def wait(self) -> Tensor:
        """Block until the rows have arrived; return them, [sum(out_splits), ...]."""
        ...


class Exchange(Protocol):
    """Something that moves rows between the ranks of one expert-parallel group."""

    name: str
    """``"flat"`` or ``"hierarchical"`` (what the planner and the results call it)."""
    group: Group
    """The expert-parallel group the rows travel in (ranks are numbered in it)."""

    def start(
        self, x: Tensor, out_splits: Sequence[int], in_splits: Sequence[int]
    ) -> PendingExchange:
        """Begin sending ``x`` [sum(in_splits), ...]; every rank must call it in the same order."""
        ...


class Ready:
    """A finished exchange (for exchanges that ran synchronously, or nothing to send).

    Example:
        >>> import torch
        >>> Ready(torch.ones(2)).wait().tolist()
        [1.0, 1.0]
    """

    def __init__(self, rows: Tensor) -> None:
        self.rows = rows

    def wait(self) -> Tensor:
        return self.rows


class AsyncWork:
    """Rows that arrive when a ``torch.distributed`` work handle completes."""

    def __init__(self, work: dist.Work, rows: Tensor) -> None:
        self.work, self.rows = work, rows

    def wait(self) -> Tensor:
        self.work.wait()
        return self.rows


class FlatExchange:
    """One ``all_to_all_single`` over the whole group, started asynchronously.

    Example:
        >>> import torch
        >>> from dynroute.parallel import local_group
        >>> with local_group():
        ...     FlatExchange().start(torch.arange(3.0), [3], [3]).wait().tolist()
        [0.0, 1.0, 2.0]
    """

    name = "flat"

    def __init__(self, group: Group = None) -> None:
        self.group = group

    def start(
        self, x: Tensor, out_splits: Sequence[int], in_splits: Sequence[int]
    ) -> PendingExchange:
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        work = dist.all_to_all_single(
            out, x.contiguous(), list(out_splits), list(in_splits), group=self.group,
            async_op=True,
        )  # fmt: skip
        return AsyncWork(work, out)
