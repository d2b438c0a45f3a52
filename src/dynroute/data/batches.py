"""Batch sampling from a flat token array: random training windows, ordered eval windows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "TokenDataset",
    "eval_window_starts",
    "eval_windows",
    "get_batch",
    "iter_eval_batches",
    "num_eval_windows",
]

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


def _cut(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """ids [n, seq_len + 1] of the windows of ``tokens`` that begin at ``starts`` [n]."""
    return tokens[starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None, :]]


def _inputs_targets(windows: np.ndarray, device: Device) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows [b, T + 1] -> inputs and targets, LongTensors [b, T] (on ``device``)."""
    buf = torch.from_numpy(np.asarray(windows, dtype=np.int64))
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
    return _inputs_targets(_cut(tokens, starts.astype(np.int64), seq_len), device)


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


def eval_window_starts(n_windows: int, max_windows: int | None = None) -> np.ndarray:
    """Indices of the evaluation windows: all of them, or ``max_windows`` evenly spaced.

    Evenly spaced rather than the first N: text is not uniformly hard along a corpus
    (the first files of a sorted folder are not a random sample), so a budget spread
    over the whole split estimates the full-split loss better than its head does.

    Example:
        >>> eval_window_starts(10, 3).tolist(), eval_window_starts(4).tolist()
        ([0, 4, 9], [0, 1, 2, 3])
    """
    if max_windows is None or max_windows >= n_windows:
        return np.arange(n_windows, dtype=np.int64)
    if max_windows <= 0:
        return np.zeros(0, dtype=np.int64)
    # Distinct because max_windows < n_windows: consecutive points differ by > 1.
    return np.linspace(0, n_windows - 1, max_windows).round().astype(np.int64)


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """The evaluation set of ``tokens``: ids ``[n, seq_len + 1]`` of non-overlapping windows.

    Window ``k`` is ``tokens[k*T : (k+1)*T + 1]`` (inputs and the shifted targets);
    ``max_windows`` of them evenly spaced (see :func:`eval_window_starts`). This is
    what ``dynroute train`` evaluates on and stores in ``model/eval_windows.npy``.

    Example:
        >>> eval_windows(np.arange(17), 4, 2).tolist()
        [[0, 1, 2, 3, 4], [12, 13, 14, 15, 16]]
    """
    _check(tokens, 1, seq_len)
    starts = eval_window_starts(num_eval_windows(tokens, seq_len), max_windows) * seq_len
    return np.asarray(_cut(tokens, starts, seq_len))


def iter_eval_batches(
    tokens: np.ndarray,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
    device: Device = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of non-overlapping windows of ``tokens`` (deterministic evaluation).

    Window ``k`` covers inputs ``tokens[k*T : (k+1)*T]`` and targets shifted by one.
    With ``max_batches``, ``max_batches * batch_size`` windows evenly spaced over the
    whole array are used (:func:`eval_window_starts`), in order. ``tokens`` may also be
    windows already cut, ``[n, T + 1]`` (:func:`eval_windows`). The last batch may hold
    fewer than ``batch_size`` rows.

    Args:
        tokens: 1-D id array ``[L]``, ``L >= seq_len + 1``, or windows ``[n, seq_len + 1]``.
        batch_size: B (max rows per batch).
        seq_len: T.
        max_batches: use at most this many batches (``None``: all windows).
        device: optional device to move the tensors to.

    Yields:
        tuple: ``x``, ``y`` LongTensors ``[b, T]`` with ``b <= B``.

    Example:
        >>> batches = list(iter_eval_batches(np.arange(17, dtype=np.uint16), 3, 4))
        >>> [tuple(x.shape) for x, _ in batches]
        [(3, 4), (1, 4)]
        >>> [x[:, 0].tolist() for x, _ in iter_eval_batches(np.arange(41), 2, 4, 1)]
        [[0, 36]]
    """
    if tokens.ndim == 2:
        if tokens.shape[1] != seq_len + 1:
            raise ValueError(
                f"evaluation windows of {tokens.shape[1] - 1} tokens, asked for seq_len {seq_len}"
            )
        windows = tokens
        if max_batches is not None:
            keep = eval_window_starts(windows.shape[0], max_batches * batch_size)
            windows = windows[keep]
    else:
        _check(tokens, batch_size, seq_len)
        limit = None if max_batches is None else max_batches * batch_size
        windows = eval_windows(tokens, seq_len, limit)
    for first in range(0, windows.shape[0], batch_size):
        yield _inputs_targets(windows[first : first + batch_size], device)


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
