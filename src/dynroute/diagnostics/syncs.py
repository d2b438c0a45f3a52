"""Count the ops that would force a device→host sync on CUDA, on any device (CPU included).

A host sync stalls the CPU until the GPU has drained its queue: the launch pipeline
empties and small kernels stop overlapping. In an MoE layer they come from
data-dependent shapes (how many rows does expert e get?) and from reading tensors in
Python. :class:`SyncCounter` records them while a region runs, as a
``TorchDispatchMode`` (aten ops, forward and backward alike) plus wrappers of the
``Tensor`` methods that read a CPU tensor into Python without any aten op
(``tolist``, ``numpy``, ``cpu``, ``to("cpu")``), installed only while counting.

What counts as a sync (``SYNC_OPS``; each call counts once):

- ``aten._local_scalar_dense``: ``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``, ``if t:``;
- ``aten.nonzero`` (``nonzero_static`` has a static size and is not counted), ``aten.unique*``,
  ``aten.masked_select``: output size depends on the data;
- ``aten.bincount``: always on CUDA (its output size is ``max(input)+1``, read on the host,
  even with ``minlength``);
- ``aten.repeat_interleave.Tensor`` without ``output_size``;
- ``aten.index.Tensor`` / ``aten.index_put_`` with a boolean index (a hidden ``nonzero``);
- ``Tensor.tolist()``, ``.numpy()``, ``.cpu()``, ``.to("cpu")``: copies to the host (on a
  CPU tensor these reach no aten op, so method wrappers count them).

Not syncs: shapes (``numel``, ``shape``), ``argsort``/``sort``/``topk``, ``cumsum``,
``searchsorted``, ``scatter_add``, ``index_select``, ``grouped_mm`` with device offsets.

Example:
    >>> import torch
    >>> with SyncCounter() as syncs:
    ...     x = torch.tensor([0, 2, 0, 1])
    ...     _ = x.nonzero(), x.sum().item(), x.argsort()
    >>> syncs.total, syncs.by_op
    (2, {'nonzero': 1, 'item': 1})
"""

from __future__ import annotations

import functools
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: aten overload packets whose every call syncs on CUDA, with the name they are counted as.
SYNC_OPS: dict[Any, str] = {
    aten._local_scalar_dense: "item",
    aten.nonzero: "nonzero",
    aten.masked_select: "masked_select",
    aten.bincount: "bincount",
    aten._unique: "unique",
    aten._unique2: "unique",
    aten.unique_dim: "unique",
    aten.unique_consecutive: "unique",
}

#: Python-level reads that copy to the host (invisible to the dispatch mode on CPU).
HOST_READS = ("tolist", "numpy", "cpu", "to")


def _has_bool_index(indices: Any) -> bool:
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()
    )


def sync_op_name(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The name a call to aten ``func`` is counted under, or None when it does not sync.

    Example:
        >>> import torch
        >>> sync_op_name(torch.ops.aten.nonzero.default, (torch.ones(2),), {})
        'nonzero'
        >>> sync_op_name(torch.ops.aten.repeat_interleave.Tensor, (torch.ones(2),),
        ...              {"output_size": 2}) is None
        True
    """
    packet = func.overloadpacket
    if packet in SYNC_OPS:
        return SYNC_OPS[packet]
    if packet is aten.repeat_interleave and func is aten.repeat_interleave.Tensor:
        return None if kwargs.get("output_size") is not None else "repeat_interleave"
    if packet is aten.repeat_interleave and func is aten.repeat_interleave.self_Tensor:
        return None if kwargs.get("output_size") is not None else "repeat_interleave"
    if packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_):
        indices = args[1] if len(args) > 1 else kwargs.get("indices")
        return "bool_index" if _has_bool_index(indices) else None
    if packet is aten._to_copy:
        device = kwargs.get("device")
        src = args[0] if args else None
        if (
            device is not None
            and torch.device(device).type == "cpu"
            and isinstance(src, torch.Tensor)
            and src.device.type != "cpu"
        ):
            return "to_cpu"
    return None


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, record: Callable[[str], None]) -> None:
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = sync_op_name(func, args, kwargs)
        if name is not None:
            self.record(name)
        return func(*args, **kwargs)


def _host_read(name: str, method: Callable[..., Any], record: Callable[[str], None]) -> Any:
    """``method`` (a Tensor method) that records ``name`` when it copies a CPU tensor to the host.

    A CUDA tensor's copy reaches the dispatch mode as ``aten._to_copy``; a CPU tensor's
    ``tolist``/``numpy``/``cpu`` reach no aten op at all, hence these wrappers.
    """

    @functools.wraps(method)
    def counted(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.device.type == "cpu":
            if name != "to":
                record(name)
            else:
                target = kwargs.get("device", args[0] if args else None)
                if isinstance(target, str | torch.device) and torch.device(target).type == "cpu":
                    record("cpu")
        return method(self, *args, **kwargs)

    return counted


def _caller() -> str:
    """The innermost frame outside torch and this module, as "file:line in function"."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and not path.endswith("diagnostics/syncs.py"):
            return f"{path.rsplit('/src/', 1)[-1]}:{frame.lineno} in {frame.name}"
    return "?"


class SyncCounter:
    """Context manager counting host syncs (see module doc) by op name.

    Args:
        trace: also record where each sync was called from (``sites``; slower).

    Attributes:
        by_op: ``{op name: calls}`` in first-seen order.
        total: all of them.
        sites: ``(op name, "file:line in function")`` per sync, innermost frame outside
            torch, when ``trace``.

    Example:
        >>> import torch
        >>> with SyncCounter() as syncs:
        ...     _ = torch.arange(4).tolist()
        >>> syncs.by_op
        {'tolist': 1}
    """

    def __init__(self, trace: bool = False) -> None:
        self.by_op: dict[str, int] = {}
        self.sites: list[tuple[str, str]] = []
        self.trace = trace
        self._counts: Counter[str] = Counter()
        self._mode = _DispatchCounter(self._record)
        self._saved: dict[str, Any] = {}

    def _record(self, name: str) -> None:
        self._counts[name] += 1
        self.by_op[name] = self._counts[name]
        if self.trace:
            self.sites.append((name, _caller()))

    @property
    def total(self) -> int:
        """All syncs counted so far."""
        return sum(self._counts.values())

    def __enter__(self) -> SyncCounter:
        # Tensor methods are wrapped, not intercepted by a TorchFunctionMode: the autograd
        # engine does not carry function modes into backward, and backward syncs count too
        for name in HOST_READS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, _host_read(name, self._saved[name], self._record))
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)
        self._saved.clear()
