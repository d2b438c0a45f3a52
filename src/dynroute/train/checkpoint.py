"""Atomic checkpoints: a crash or SIGKILL at any moment leaves the previous one intact.

A run folder holds::

    run.json          the RunConfig (a rerun with a different config is refused)
    checkpoint.pt     model + optimizer + step + data-sampler and torch RNG states
    model/            the latest weights as a transformers folder (from_pretrained-able)
    metrics.jsonl     one JSON object per logged step / evaluation

``checkpoint.pt`` is the source of truth for resuming; it is written to a temporary
file in the same folder and ``os.replace``-d into place, which is atomic on POSIX.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_NAME",
    "MODEL_DIR",
    "atomic_save",
    "export_model",
    "load_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_DIR = "model"


def atomic_save(obj: Any, path: Path | str) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync, then rename onto ``path``.

    Example:
        >>> atomic_save({"step": 3}, "/tmp/ckpt-doctest.pt")
        >>> torch.load("/tmp/ckpt-doctest.pt")["step"]
        3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save` (CPU tensors, full pickle).

    The checkpoint holds RNG states and plain Python values besides tensors, so
    ``weights_only`` is off: only load checkpoints you wrote yourself.

    Example:
        >>> atomic_save({"step": 3}, "/tmp/ckpt-doctest.pt")
        >>> load_checkpoint("/tmp/ckpt-doctest.pt")["step"]
        3
    """
    return torch.load(path, map_location="cpu", weights_only=False)


def export_model(model: Any, folder: Path | str, extra: dict[str, str] | None = None) -> Path:
    """Write ``model.save_pretrained`` output to ``folder`` without a half-written state.

    The new folder is written next to the old one and swapped in with two renames;
    ``extra`` maps file names to text written into the folder too (e.g. data config).

    Returns:
        Path: ``folder``.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is on screen
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
