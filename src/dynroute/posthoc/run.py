"""The sweep on a model folder: load it, cut its evaluation and calibration text, sweep."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynroute.checkpoints import load_model
from dynroute.data import eval_windows as eval_windows_of
from dynroute.posthoc.slots import DenseModelError, moe_slots
from dynroute.posthoc.sweep import SweepData, SweepSettings, check_targets, sweep

__all__ = ["posthoc_model", "split_windows", "window_inputs"]


def split_windows(
    windows: np.ndarray, eval_windows: int, calib_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """(evaluation windows, calibration windows) of an evaluation set [n, T + 1]: the even
    windows evaluate, the odd ones (disjoint, over the same text) calibrate; each is
    thinned evenly to the number asked for.

    Example:
        >>> ev, cal = split_windows(np.arange(40).reshape(10, 4), 3, 6)
        >>> ev[:, 0].tolist(), cal[:, 0].tolist()
        ([0, 16, 32], [4, 36])
    """
    seq_len = windows.shape[1] - 1
    n_calib = max(1, calib_tokens // seq_len)
    return _thin(windows[0::2], eval_windows), _thin(windows[1::2], n_calib)


def _thin(windows: np.ndarray, n: int) -> np.ndarray:
    if len(windows) <= n:
        return windows
    return windows[np.linspace(0, len(windows) - 1, n).round().astype(np.int64)]


def window_inputs(windows: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    """Input batches [B, T] of windows [n, T + 1] (the last id of each is a target only).

    Example:
        >>> [b.shape for b in window_inputs(np.zeros((5, 9), dtype=np.int64), 2)]
        [torch.Size([2, 8]), torch.Size([2, 8]), torch.Size([1, 8])]
    """
    ids = torch.as_tensor(np.asarray(windows[:, :-1]), dtype=torch.long)
    return list(ids.split(batch_size))


def posthoc_model(
    path: str | Path,
    settings: SweepSettings,
    *,
    eval_windows: int = 64,
    calib_tokens: int = 8192,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`~dynroute.posthoc.sweep` on the model folder ``path`` (a ``dynroute train``
    run, its ``model/`` folder or a transformers MoE checkpoint).

    Evaluation: ``eval_windows`` windows of the model's own evaluation set (every other
    one); calibration: the windows between them (held out from training and disjoint from
    the evaluation windows, from the same split: the training split's text differs);
    fixes: the corpus's training split.

    Raises:
        DenseModelError: the model has no top-k MoE layer (before any text is read).
        ValueError: a target outside (0, 1].
    """
    loaded = load_model(path)
    try:  # a dense model is refused before any text is read
        k = moe_slots(loaded.model)[0].k
    except DenseModelError as err:
        raise DenseModelError(f"{path}: {err}") from None
    try:
        check_targets(settings.targets)
    except ValueError as err:
        raise ValueError(f"{path} (top-{k}): {err}") from None
    seq_len = loaded.seq_len
    # the fixes train on windows no longer than the model's own (its max_seq_len may be that)
    settings = dataclasses.replace(settings, fix_seq_len=min(settings.fix_seq_len, seq_len))
    if loaded.windows is not None or loaded.prepared is not None:
        every = loaded.eval_set()
    else:  # a transformers checkpoint: cut only the text needed from the held-out split
        need = (2 * eval_windows + 2 * (calib_tokens // seq_len) + 4) * (seq_len + 1)
        every = eval_windows_of(loaded.tokens(max_tokens=need)[:need], seq_len)
    windows, calib = split_windows(every, eval_windows, calib_tokens)
    train = None
    if settings.fixes:
        budget = 4 * settings.fix_tokens + seq_len + 1
        train = np.asarray(loaded.tokens(split="train", max_tokens=budget))
    data = SweepData(windows, window_inputs(calib, settings.batch_size), train)
    label = Path(path).name
    return sweep(loaded.model, data, settings, label=label, progress=progress)
