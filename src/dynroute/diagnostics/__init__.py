"""Diagnostics of the hot path: host-sync counting.

Example:
    >>> import torch
    >>> from dynroute.diagnostics import SyncCounter
    >>> with SyncCounter() as syncs:
    ...     _ = torch.ones(3).sum().item()
    >>> syncs.total
    1
"""

from dynroute.diagnostics.syncs import SYNC_OPS, SyncCounter, sync_op_name

__all__ = ["SYNC_OPS", "SyncCounter", "sync_op_name"]
