"""Batch sampling from a flat token array: random training windows, ordered eval windows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["TokenDataset", "get_batch", "iter_eval_batches", "num_eval_windows"]

Device = torch.device | str | None


def _check(tokens: np.ndarray, batch_size: int, seq_len: int) -> None:
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    if tokens.shape[0] < seq_len + 1:
        raise ValueError(
            f"only {tokens.shape[0]} tokens, need at least seq_len + 1 = {seq_len + 1}; "
            "use a shorter seq_len or a larger corpus"
        )


def _windows(
    tokens: np.ndarray, starts: np.ndarray, seq_len: int, device: Device
) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None, :]
    buf = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    x, y = buf[:, :-1].contiguous(), buf[:, 1:].contiguous()
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y


def get_batch(
    tokens: np.ndarray,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator | None = None,
    device: Device = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows; targets are inputs shifted by one.

    Start offsets are drawn uniformly from ``[0, L - seq_len - 1]`` with ``generator``
    (a CPU ``torch.Generator``; same seed -> same batches).

    Args:
        tokens: 1-D id array ``[L]`` (e.g. a uint16 memmap), ``L >= seq_len + 1``.
        batch_size: B.
        seq_len: T.
        generator: CPU random generator (``None`` uses torch's global RNG).
        device: optional device to move the tensors to.

    Returns:
        tuple: ``x`` LongTensor ``[B, T]`` and ``y`` LongTensor ``[B, T]`` with
        ``y[:, t] == x[:, t + 1]`` for ``t < T - 1``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = get_batch(np.arange(100, dtype=np.uint16), 4, 8, g)
        >>> x.shape, bool((y[:, :-1] == x[:, 1:]).all())
        (torch.Size([4, 8]), True)
    """
    _check(tokens, batch_size, seq_len)
    high = int(tokens.shape[0]) - seq_len
    starts = torch.randint(0, high, (batch_size,), generator=generator).numpy()
    return _windows(tokens, starts.astype(np.int64), seq_len, device)


def num_eval_windows(tokens: np.ndarray, seq_len: int) -> int:
    """Number of non-overlapping ``seq_len`` windows :func:`iter_eval_batches` walks.

    Args:
        tokens: 1-D id array ``[L]``.
        seq_len: T.

    Returns:
        int: ``(L - 1) // T``.

    Example:
        >>> num_eval_windows(np.zeros(17), 4)
        4
    """
    return max(int(tokens.shape[0]) - 1, 0) // seq_len


def iter_eval_batches(
    tokens: np.ndarray,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
    device: Device = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Walk ``tokens`` in order with non-overlapping windows (deterministic evaluation).

    Window ``k`` covers inputs ``tokens[k*T : (k+1)*T]`` and targets shifted by one.
    The last batch may hold fewer than ``batch_size`` rows.

    Args:
        tokens: 1-D id array ``[L]``, ``L >= seq_len + 1``.
        batch_size: B (max rows per batch).
        seq_len: T.
        max_batches: stop after this many batches (``None``: all windows).
        device: optional device to move the tensors to.

    Yields:
        tuple: ``x``, ``y`` LongTensors ``[b, T]`` with ``b <= B``.

    Example:
        >>> batches = list(iter_eval_batches(np.arange(17, dtype=np.uint16), 3, 4))
        >>> [tuple(x.shape) for x, _ in batches]
        [(3, 4), (1, 4)]
    """
    _check(tokens, batch_size, seq_len)
    n_windows = num_eval_windows(tokens, seq_len)
    for i, first in enumerate(range(0, n_windows, batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        starts = np.arange(first, min(first + batch_size, n_windows), dtype=np.int64) * seq_len
        yield _windows(tokens, starts, seq_len, device)


@dataclass(frozen=True)
class TokenDataset:
    """A flat token array with batch helpers.

    Attributes:
        tokens: 1-D id array ``[L]`` (typically a read-only uint16 memmap).

    Example:
        >>> ds = TokenDataset(np.arange(50, dtype=np.uint16))
        >>> x, y = ds.batch(2, 8, torch.Generator().manual_seed(0))
        >>> len(ds), x.shape
        (50, torch.Size([2, 8]))
    """

    tokens: np.ndarray

    @classmethod
    def from_file(cls, path: Path | str, fingerprint: str | None = None) -> TokenDataset:
        """Open a token ``.bin`` file (see ``dynroute.data.tokens.load_token_file``).

        Example:
            >>> TokenDataset.from_file("/tmp/t.bin")  # doctest: +SKIP
        """
        from dynroute.data.tokens import load_token_file

        return cls(load_token_file(path, fingerprint))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def batch(
        self,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator | None = None,
        device: Device = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random ``(x, y)`` LongTensors ``[B, T]``; see :func:`get_batch`.

        Example:
            >>> TokenDataset(np.arange(20)).batch(1, 4)[0].shape
            torch.Size([1, 4])
        """
        return get_batch(self.tokens, batch_size, seq_len, generator, device)

    def eval_batches(
        self,
        batch_size: int,
        seq_len: int,
        max_batches: int | None = None,
        device: Device = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Ordered non-overlapping ``(x, y)`` batches; see :func:`iter_eval_batches`.

        Example:
            >>> len(list(TokenDataset(np.arange(20)).eval_batches(2, 4)))  # 4 windows
            2
        """
        return iter_eval_batches(self.tokens, batch_size, seq_len, max_batches, device)
