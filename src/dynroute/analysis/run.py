"""Run a model over held-out text, record its routing, write ``stats.json``.

``analyze_checkpoint`` is the recipe behind ``dynroute analyze``: load a checkpoint and
its held-out text (:func:`dynroute.checkpoints.load_model`), stream the text through the
model (:func:`dynroute.evaluation.evaluate_lm`) with a :class:`RoutingRecorder` attached,
summarize, save. ``analyze_model`` does the same for a model you already hold in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dynroute.analysis.offloading import offload_stats, offload_trace
from dynroute.analysis.recorder import RecorderConfig, RoutingRecorder
from dynroute.analysis.summary import summarize
from dynroute.checkpoints import CHECKPOINT_NAMES, LoadedModel, load_model, router_text
from dynroute.common.jsonfile import write_json
from dynroute.data import iter_eval_batches, num_eval_windows
from dynroute.evaluation import evaluate_lm

__all__ = ["analyze_checkpoint", "analyze_model", "load_stats", "write_stats"]

STATS_FILE = "stats.json"


def analyze_model(
    model: nn.Module,
    tokens: np.ndarray | Tensor,
    *,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens: int | None = None,
    config: RecorderConfig | None = None,
    decode: Callable[[int], str] | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    recorder: RoutingRecorder | None = None,
) -> dict[str, Any]:
    """Routing statistics of ``model`` on a flat token array (the ``stats.json`` dict).

    Args:
        model: a causal LM whose routing modules are ``dynroute.layers.MoE`` (or give a
            ``recorder`` already attached to an adapted model's modules).
        tokens: 1-D ids ``[L]``, cut into non-overlapping windows of ``seq_len``, or
            windows already cut ``[n, seq_len + 1]`` (a run's evaluation set).
        seq_len, batch_size: window length and windows per forward pass.
        max_tokens: analyse at most this many tokens (None: all).
        config: recorder settings; decode: id -> text for the top-token tables.
        meta: stored under ``stats["meta"]``.

    Example:
        >>> import torch
        >>> from dynroute.layers import MoE
        >>> class Tiny(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb, self.moe = nn.Embedding(16, 8), MoE(8, 16, 4, router="top_p", p=0.5)
        ...         self.head = nn.Linear(8, 16)
        ...     def forward(self, x):
        ...         return self.head(self.moe(self.emb(x))[0])
        >>> stats = analyze_model(Tiny(), torch.arange(65) % 16, seq_len=16, progress=False)
        >>> stats["meta"]["num_tokens"], len(stats["experts_per_layer"])
        (64, 1)
    """
    ids = tokens.numpy() if isinstance(tokens, Tensor) else np.asarray(tokens)
    if ids.ndim == 2:  # windows already cut
        keep = ids.shape[0] if max_tokens is None else max(1, max_tokens // seq_len)
        ids = ids[:keep]
        n_windows = ids.shape[0]
    else:
        if max_tokens is not None:
            ids = ids[: max_tokens + 1]
        n_windows = num_eval_windows(ids, seq_len)
    if ids.ndim == 1 and ids.shape[0] < seq_len + 1:
        raise ValueError(
            f"analyze: only {ids.shape[0]} held-out tokens, need at least seq_len + 1 = "
            f"{seq_len + 1}; pass more text (--data) or a shorter --seq-len"
        )
    own = recorder is None
    rec = recorder or RoutingRecorder(config)
    if own:
        rec.attach_model(model)
    try:
        with offload_trace(model) as tracer:
            run = evaluate_lm(
                model,
                iter_eval_batches(ids, batch_size, seq_len),
                before_batch=rec.begin_batch,
                after_batch=lambda output, losses: rec.end_batch(losses),
                progress=progress,
                total=-(-n_windows // batch_size),
                label="routing",
                interruptible=True,  # Ctrl-C keeps what was recorded (a second one aborts)
            )
    finally:
        if own:
            rec.detach()
    completed = run.completed
    info = {"seq_len": seq_len, "batch_size": batch_size, "completed": completed}
    stats = summarize(rec, decode=decode, meta={**info, **(meta or {})})
    offload = offload_stats(tracer)
    if offload is not None:
        stats["offload"] = offload
    return stats


def write_stats(stats: dict[str, Any], out_dir: str | Path) -> Path:
    """Atomically write ``out_dir/stats.json`` (never a half-written file)."""
    path = Path(out_dir) / STATS_FILE
    write_json(path, stats, indent=1)
    return path


def load_stats(path: str | Path) -> dict[str, Any]:
    """Read ``stats.json`` from a file or an analysis folder.

    Raises:
        FileNotFoundError: with a hint to run ``dynroute analyze`` first.
    """
    p = Path(path)
    if p.is_dir():
        p = p / STATS_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"analyze: no {STATS_FILE} at {p}; run `dynroute analyze CHECKPOINT --out DIR` first"
        )
    return json.loads(p.read_text())


def analyze_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "validation",
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    config: RecorderConfig | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Analyse one checkpoint on held-out text and write ``out_dir/stats.json``.

    Args:
        checkpoint: a ``dynroute train`` run folder, a ``save_pretrained`` folder of a
            dynroute model, or a transformers MoE checkpoint (see
            :func:`dynroute.checkpoints.load_model`).
        out_dir: where ``stats.json`` goes.
        data: held-out text (default: the run's corpus or the stdlib corpus): a file is
            read whole, a folder or saved dataset by ``split``.
        seq_len: window length (default: the run's, else min(256, the model's limit)).
        max_tokens: analyse at most this many tokens. None: a dynroute run's evaluation
            set (the windows ``dynroute train`` and ``dynroute eval`` score) when no
            other ``data``, ``split`` or ``seq_len`` is asked for, else 65,536.
        batch_size, config: see :func:`analyze_model`.
        device: run the model there (e.g. ``"cuda"``); default: where it loads (CPU).

    Returns:
        dict: the statistics written.

    Example:
        >>> stats = analyze_checkpoint("runs/top_p", "analysis/top_p")  # doctest: +SKIP
        >>> stats["experts_per_layer"]  # doctest: +SKIP
        [1.9, 1.7, 1.6, 1.5]
    """
    _check_request(split, device)
    loaded = load_model(checkpoint)
    other = getattr(loaded.model, "report_command", None)  # a family with its own report
    if other:
        raise ValueError(
            f"{checkpoint} holds a {type(loaded.model).__name__}, which has no MoE routing to "
            f"analyse; `{other} {checkpoint}` reports where it spends its compute"
        )
    own_set = data is None and split == "validation" and seq_len in (None, loaded.seq_len)
    if own_set and max_tokens is None and loaded.kind != "hf-moe":
        tokens = loaded.eval_set()  # the same windows as training's and `dynroute eval`'s
    else:
        max_tokens = 65_536 if max_tokens is None else max_tokens
        tokens = loaded.tokens(data, split, max_tokens)
    if device is not None:
        loaded.model.to(device)
    _check_vocabulary(loaded, tokens)
    tok = loaded.tokenizer
    stats = analyze_model(
        loaded.model,
        tokens,
        seq_len=seq_len or loaded.seq_len,
        batch_size=batch_size,
        max_tokens=max_tokens,
        config=config,
        decode=lambda i: tok.decode([i]),
        meta=_checkpoint_meta(loaded, data, split),
        progress=progress,
    )
    write_stats(stats, out_dir)
    return stats


def _check_request(split: str, device: str | torch.device | None) -> None:
    """Refuse a split or a device that cannot work, before loading anything."""
    if split not in ("validation", "train"):
        raise ValueError(f"analyze: split must be 'validation' or 'train', got {split!r}")
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"analyze: device {device!r} asked for, but CUDA is not available here")


def _check_vocabulary(loaded: LoadedModel, tokens: np.ndarray) -> None:
    """Token ids past the model's vocabulary mean the tokenizer is not the checkpoint's."""
    vocab = int(getattr(loaded.model.config, "vocab_size", 0)) or None
    if vocab is not None and tokens.size and int(tokens.max()) >= vocab:
        raise ValueError(
            f"analyze: token id {int(tokens.max())} is outside the model's vocabulary "
            f"({vocab}); the tokenizer does not match the checkpoint — put the training "
            "tokenizer.json next to config.json"
        )


def _checkpoint_meta(loaded: LoadedModel, data: str | Path | None, split: str) -> dict[str, Any]:
    """What ``stats["meta"]`` records about the checkpoint and the text it read."""
    folder = loaded.folder
    return {
        "name": folder.parent.name if folder.name in CHECKPOINT_NAMES else folder.name,
        "checkpoint": str(folder),
        "split": split,
        "router": router_text(loaded.model),
        "model_type": getattr(loaded.model.config, "model_type", None),
        "data": str(loaded.data["source"] if data is None else data),
        "kind": loaded.kind,
    }
