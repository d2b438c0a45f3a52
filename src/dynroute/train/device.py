"""Where and in which precision a training step runs: device, autocast, fused AdamW.

Weights and optimizer state always stay float32 (the "master weights"); ``bfloat16``
only changes the compute dtype of matmuls through ``torch.autocast``, so no loss
scaling is needed and a checkpoint never depends on the dtype it was trained in.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch

__all__ = [
    "DTYPES",
    "autocast",
    "fused_adamw_supported",
    "parse_device",
    "resolve_device",
    "to_cpu",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""The compute dtypes a run config accepts."""

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def parse_device(spec: str) -> str:
    """Check the syntax of a device setting (no hardware check); return it.

    Example:
        >>> parse_device("cuda:1")
        'cuda:1'
        >>> parse_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device = 'gpu': use "auto", "cpu", "cuda" or "cuda:<index>"
    """
    if not isinstance(spec, str) or not _DEVICE.fullmatch(spec):
        raise ValueError(f'device = {spec!r}: use "auto", "cpu", "cuda" or "cuda:<index>"')
    return spec


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """The torch device of a setting: ``auto`` is CUDA when present; ranks take their GPU.

    Args:
        spec: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:i"``.
        local_rank: this process's index on its machine under torchrun; ``"auto"`` and
            ``"cuda"`` then mean ``cuda:local_rank`` (one GPU per process).

    Raises:
        ValueError: CUDA was asked for but is not available, or the index is out of range.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
        True
    """
    parse_device(spec)
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device = {spec!r} but this machine has no CUDA GPU visible to torch "
            f"(torch {torch.__version__}); use --device cpu or --device auto"
        )
    index = int(spec.split(":")[1]) if ":" in spec else (local_rank or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"device = {spec!r}: only {torch.cuda.device_count()} GPU(s) are visible; "
            f"use an index below {torch.cuda.device_count()}"
        )
    return torch.device("cuda", index)


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for float32.

    Example:
        >>> with autocast(torch.device("cpu"), "bfloat16"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    if DTYPES[dtype] == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether to ask AdamW for its fused kernel: on CUDA (one kernel for all parameters).

    On CPU torch has a fused kernel too, but it changes the low bits of the update
    relative to the default ``foreach`` path, and a CPU run's step is dominated by the
    model anyway; the recipe keeps CPU runs bit-compatible with earlier ones.

    Example:
        >>> fused_adamw_supported(torch.device("cpu"))
        False
    """
    return device.type == "cuda"


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor (in dicts, lists, tuples) moved to the CPU, for checkpoints.

    Example:
        >>> to_cpu({"a": [torch.ones(1)], "b": 2})["a"][0].device
        device(type='cpu')
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
