"""Run a model over held-out text, record its routing, write ``stats.json``.

``analyze_checkpoint`` is the recipe behind ``dynroute analyze``: load a checkpoint,
tokenize held-out text, stream it through the model with a :class:`RoutingRecorder`
attached, summarize, save. ``analyze_model`` is the same loop for a model you already
hold in memory.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dynroute.analysis.recorder import RecorderConfig, RoutingRecorder
from dynroute.analysis.summary import summarize

__all__ = [
    "Loaded",
    "analyze_checkpoint",
    "analyze_model",
    "load_checkpoint",
    "load_stats",
    "resolve_checkpoint",
    "run_model",
    "token_losses",
    "write_stats",
]

STATS_FILE = "stats.json"
CHECKPOINT_NAMES = ("final", "best", "last", "latest", "checkpoint", "model")


def token_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Tensor [B, T]: per-token cross-entropy (nats) of next-token logits [B, T, V].

    Example:
        >>> import torch
        >>> token_losses(torch.zeros(1, 2, 4), torch.tensor([[0, 3]])).tolist()
        [[1.3862943649291992, 1.3862943649291992]]
    """
    b, t, v = logits.shape
    loss = F.cross_entropy(
        logits.float().reshape(b * t, v), targets.reshape(b * t), reduction="none"
    )
    return loss.view(b, t)


def _logits(output: Any) -> Tensor:
    """The logits of a model output: a tensor, ``.logits``, or the first tuple item."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"analyze: cannot find logits in a model output of type {type(output).__name__}; "
        "the model should return logits [B, T, V] or an object with .logits"
    )


class _StopAfterBatch:
    """First Ctrl-C: finish the current batch, then stop; a second one interrupts at once.

    Stopping between batches keeps every layer's counts consistent (a batch is either
    recorded in all layers or in none). Only the main thread can catch signals; elsewhere
    this does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C is a real interrupt

    def __enter__(self) -> _StopAfterBatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGINT, self._previous)


@torch.no_grad()
def run_model(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    recorder: RoutingRecorder,
    *,
    total: int | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> bool:
    """Feed ``(x, y)`` batches [B, T] through ``model``, recording routing and token loss.

    The recorder must already be attached to the model's routing modules. Ctrl-C stops
    after the current batch and keeps what was recorded (a second Ctrl-C aborts).

    Returns:
        bool: True if every batch ran, False if stopped early.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    was_training = model.training
    model.eval()
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    bar = Progress(*columns, TimeRemainingColumn(), disable=not progress, transient=True)
    try:
        with bar, _StopAfterBatch() as stop:
            task = bar.add_task("routing", total=total)
            for x, y in batches:
                if device is not None:
                    x, y = x.to(device), y.to(device)
                recorder.begin_batch(x)
                logits = _logits(model(x))
                recorder.end_batch(token_losses(logits, y))
                bar.advance(task)
                if stop.requested:
                    return False
    finally:
        model.train(was_training)
    return True


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
        tokens: 1-D ids ``[L]``, cut into non-overlapping windows of ``seq_len``.
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
    from dynroute.data import iter_eval_batches, num_eval_windows

    ids = tokens.numpy() if isinstance(tokens, Tensor) else np.asarray(tokens)
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    if ids.shape[0] < seq_len + 1:
        raise ValueError(
            f"analyze: only {ids.shape[0]} held-out tokens, need at least seq_len + 1 = "
            f"{seq_len + 1}; pass more text (--data) or a shorter --seq-len"
        )
    own = recorder is None
    rec = recorder or RoutingRecorder(config)
    if own:
        rec.attach_model(model)
    windows = num_eval_windows(ids, seq_len)
    total = -(-windows // batch_size)
    device = next((p.device for p in model.parameters()), None)
    try:
        completed = run_model(
            model,
            iter_eval_batches(ids, batch_size, seq_len),
            rec,
            total=total,
            progress=progress,
            device=device,
        )
    finally:
        if own:
            rec.detach()
    info = {"seq_len": seq_len, "batch_size": batch_size, "completed": completed}
    return summarize(rec, decode=decode, meta={**info, **(meta or {})})


# ---------------------------------------------------------------------------- checkpoints


def resolve_checkpoint(path: str | Path) -> Path:
    """The folder holding ``config.json`` + weights: ``path`` itself or a checkpoint in it.

    A training run folder is searched for a sub-folder with a ``config.json``
    (preferring ``final``, ``best``, ``last``, ... then the newest).

    Raises:
        FileNotFoundError: with what was looked for.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"analyze: checkpoint {root} does not exist")
    if (root / "config.json").is_file():
        return root
    subs = [p.parent for p in root.glob("*/config.json")] + [
        p.parent for p in root.glob("*/*/config.json")
    ]
    if not subs:
        raise FileNotFoundError(
            f"analyze: {root} has no config.json (nor any sub-folder with one); pass a "
            "folder written by save_pretrained (config.json + model.safetensors) or a "
            "`dynroute train` run folder"
        )
    for name in CHECKPOINT_NAMES:
        for s in subs:
            if s.name == name:
                return s
    return max(subs, key=lambda s: (s / "config.json").stat().st_mtime)


@dataclass
class Loaded:
    """A model ready to analyse, with its held-out tokens and tokenizer.

    Attributes:
        model: eval-mode causal LM; folder: the checkpoint folder it came from.
        tokens: held-out ids [L]; tokenizer: has ``decode(list[int]) -> str``.
        seq_len: default window length; info: run details for ``stats["meta"]``.
    """

    model: nn.Module
    folder: Path
    tokens: np.ndarray
    tokenizer: Any
    seq_len: int
    info: dict[str, Any]


def _train_loader(path: Path) -> Any | None:
    """``dynroute.train``'s checkpoint loader for a run folder or a model it exported.

    Only those carry the run's data settings (``run.json`` / ``dynroute_data.json``);
    for any other folder our own loading knows as much and also reads a
    ``tokenizer.json`` beside the weights.
    """
    if not ((path / "run.json").is_file() or (path / "dynroute_data.json").is_file()):
        return None
    try:
        from dynroute.train import evaluate as train_eval
    except ImportError:
        return None
    loaders = getattr(train_eval, "CHECKPOINT_LOADERS", [])
    if any(detect(path) for _kind, detect, _load in loaders):
        return train_eval
    return None


def _encode(tokenizer: Any, docs: list[str]) -> np.ndarray:
    """Flat ids of ``docs`` with an end-of-text id after each (dynroute or HF tokenizer)."""
    from tokenizers import Tokenizer

    from dynroute import data as dd

    if isinstance(tokenizer, Tokenizer):
        return dd.encode_documents(tokenizer, docs)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def _text_tokens(
    tokenizer: Any, data: str | Path | None, split: str, max_tokens: int | None
) -> np.ndarray:
    from dynroute import data as dd

    # ~4 bytes per token: 8 bytes per wanted token fills max_tokens without reading more.
    cap = None if max_tokens is None else 8 * (max_tokens + 1)
    return _encode(tokenizer, dd.load_corpus(data, split, max_bytes=cap))  # type: ignore[arg-type]


def load_checkpoint(
    path: str | Path,
    data: str | Path | None = None,
    split: str = "validation",
    max_tokens: int | None = None,
) -> Loaded:
    """Load a checkpoint with the held-out text it should be analysed on.

    Recognised, in order: a ``dynroute train`` run folder or its ``model/`` folder
    (through ``dynroute.train``: the run's own data settings and tokenizer), a
    transformers MoE checkpoint (``dynroute.hf.load_patched``, its own tokenizer), and
    any folder with ``config.json`` + weights of ``DynMoEForCausalLM`` (tokenizer from a
    ``tokenizer.json`` beside it, else ``dynroute.data``'s for ``data`` at the model's
    vocabulary size).

    Args:
        path: checkpoint or run folder.
        data: held-out corpus (default: the run's corpus, else the stdlib corpus).
        split: ``"validation"`` (default) or ``"train"``.
        max_tokens: tokens needed (bounds how much text is tokenized).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours is the one on screen
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"analyze: checkpoint {root} does not exist")
    train_eval = _train_loader(root)
    if train_eval is not None:
        loaded = train_eval.load_any_checkpoint(root)
        # The run's own corpus settings give its tokenizer (cached by dynroute.data);
        # other text is encoded with that tokenizer, never with one trained on it.
        prepared = train_eval.load_data(loaded.data)
        if data is None:
            tokens = prepared.val_tokens if split == "validation" else prepared.train_tokens
            source = str(loaded.data.source)
        else:
            tokens = _text_tokens(prepared.tokenizer, data, split, max_tokens)
            source = str(data)
        folder = root / "model" if (root / "model" / "config.json").is_file() else root
        info = {"data": source, "kind": loaded.kind}
        return Loaded(
            loaded.model.eval(),
            folder,
            np.asarray(tokens),
            prepared.tokenizer,
            loaded.seq_len,
            info,
        )

    folder = resolve_checkpoint(root)
    config = json.loads((folder / "config.json").read_text())
    data_name = str(data) if data is not None else "stdlib"
    try:
        from dynroute import hf
    except ImportError:
        hf = None  # type: ignore[assignment]
    if hf is not None and hf.is_hf_moe_checkpoint(folder):
        model = hf.load_patched(folder)
        tok = hf.load_tokenizer(folder)
        tokens = _text_tokens(tok, data, split, max_tokens)
        limit = getattr(model.config, "max_position_embeddings", 256)
        return Loaded(model.eval(), folder, tokens, tok, min(256, int(limit)), {"data": data_name})
    if config.get("model_type") != "dynmoe":
        raise ValueError(
            f"analyze: {folder}/config.json has model_type {config.get('model_type')!r}; "
            "dynroute analyze reads dynroute models (model_type 'dynmoe') and transformers "
            "MoE checkpoints dynroute.hf supports"
        )
    from dynroute.models import DynMoEForCausalLM

    model = DynMoEForCausalLM.from_pretrained(folder)
    vocab = int(model.config.vocab_size)
    tok_file = _find_tokenizer(folder)
    if tok_file is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_file))
        tokens = _text_tokens(tok, data, split, max_tokens)
    else:
        if split != "validation":
            raise ValueError("analyze: --split train needs a tokenizer.json beside config.json")
        from dynroute.data import prepare_data

        prepared = prepare_data(data, vocab_size=vocab)
        tok, tokens = prepared.tokenizer, np.asarray(prepared.val_tokens)
    seq_len = min(256, int(getattr(model.config, "max_seq_len", 256)))
    return Loaded(model.eval(), folder, tokens, tok, seq_len, {"data": data_name})


def _find_tokenizer(folder: Path) -> Path | None:
    for where in (folder, folder.parent):
        if (where / "tokenizer.json").is_file():
            return where / "tokenizer.json"
    return None


def write_stats(stats: dict[str, Any], out_dir: str | Path) -> Path:
    """Atomically write ``out_dir/stats.json`` (never a half-written file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".stats-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(stats, f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
    os.replace(tmp, out / STATS_FILE)
    return out / STATS_FILE


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


def _router_text(model: nn.Module) -> str | None:
    """``top_p(p=0.4)``-style description of a model's routing (None if unknown)."""
    cfg = getattr(model, "config", None)
    router = getattr(cfg, "router", None)
    if router is not None and hasattr(cfg, "router_kwargs"):
        return f"{router}(" + ", ".join(f"{k}={v}" for k, v in cfg.router_kwargs().items()) + ")"
    # dynroute.hf blocks carry a RouterSpec with describe(); layers may differ.
    specs = {m.spec.describe() for m in model.modules() if hasattr(m, "routing_callback")}
    return ", ".join(sorted(specs)) or None


def analyze_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "validation",
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = 65_536,
    config: RecorderConfig | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Analyse one checkpoint on held-out text and write ``out_dir/stats.json``.

    Args:
        checkpoint: a ``dynroute train`` run folder, a ``save_pretrained`` folder of a
            dynroute model, or a transformers MoE checkpoint (see :func:`load_checkpoint`).
        out_dir: where ``stats.json`` goes.
        data: held-out corpus (default: the run's corpus or the stdlib corpus);
            split: its part to read.
        seq_len: window length (default: the run's, else min(256, the model's limit)).
        batch_size, max_tokens, config: see :func:`analyze_model`.
        device: run the model there (e.g. ``"cuda"``); default: where it loads (CPU).

    Returns:
        dict: the statistics written.

    Example:
        >>> stats = analyze_checkpoint("runs/top_p", "analysis/top_p")  # doctest: +SKIP
        >>> stats["experts_per_layer"]  # doctest: +SKIP
        [1.9, 1.7, 1.6, 1.5]
    """
    if split not in ("validation", "train"):
        raise ValueError(f"analyze: split must be 'validation' or 'train', got {split!r}")
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"analyze: device {device!r} asked for, but CUDA is not available here")
    loaded = load_checkpoint(checkpoint, data, split, max_tokens)
    if device is not None:
        loaded.model.to(device)
    cfg = loaded.model.config
    vocab = int(getattr(cfg, "vocab_size", 0)) or None
    if vocab is not None and loaded.tokens.size and int(loaded.tokens.max()) >= vocab:
        raise ValueError(
            f"analyze: token id {int(loaded.tokens.max())} is outside the model's vocabulary "
            f"({vocab}); the tokenizer does not match the checkpoint — put the training "
            "tokenizer.json next to config.json"
        )
    folder = loaded.folder
    router = _router_text(loaded.model)
    name = folder.parent.name if folder.name in CHECKPOINT_NAMES else folder.name
    meta = {
        "name": name,
        "checkpoint": str(folder),
        "split": split,
        "router": router,
        "model_type": getattr(cfg, "model_type", None),
        **loaded.info,
    }
    tok = loaded.tokenizer
    stats = analyze_model(
        loaded.model,
        loaded.tokens,
        seq_len=seq_len or loaded.seq_len,
        batch_size=batch_size,
        max_tokens=max_tokens,
        config=config,
        decode=lambda i: tok.decode([i]),
        meta=meta,
        progress=progress,
    )
    write_stats(stats, out_dir)
    return stats
