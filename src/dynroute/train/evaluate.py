"""Evaluation: validation loss, perplexity, experts per token, activated parameters, speed.

``evaluate_checkpoint(path)`` is the entry point of ``dynroute eval``. It finds a loader
for the checkpoint type through :data:`CHECKPOINT_LOADERS` (a dynroute run folder, or a
``model/`` folder exported by it); other formats (e.g. a transformers MoE checkpoint)
plug in with :func:`register_checkpoint_loader`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynroute.data import encode_documents, iter_eval_batches, load_corpus
from dynroute.routing import make_router
from dynroute.train.config import DataConfig, RunConfig
from dynroute.train.data import DATA_FILE, load_data

__all__ = [
    "CHECKPOINT_LOADERS",
    "LoadedCheckpoint",
    "activated_parameters",
    "evaluate_checkpoint",
    "evaluate_model",
    "register_checkpoint_loader",
]


def activated_parameters(model: nn.Module, experts_per_layer: list[float]) -> dict[str, float]:
    """Non-embedding parameters one token activates, and the same under top-2 routing.

    Every parameter counts except the embedding table and the LM head (the usual
    "non-embedding" convention); an MoE layer contributes its router plus
    ``experts_per_layer[i]`` experts' worth of FFN weights.

    Args:
        model: a model whose ``moe_layers()`` returns its ``dynroute.layers.MoE`` modules.
        experts_per_layer: mean real experts per token of each MoE layer, in order.

    Returns:
        dict: ``activated_params``, ``activated_params_top2``, ``activated_param_ratio``
        (activated / top-2), ``expert_param_ratio`` (expert FFN weights only, i.e.
        mean experts / 2), ``total_params``.

    Example:
        >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
        >>> m = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=1,
        ...                                    n_heads=2, d_ff=16, num_experts=4))
        >>> activated_parameters(m, [2.0])["activated_param_ratio"]
        1.0
    """
    moes = list(model.moe_layers())  # type: ignore[operator]
    if len(moes) != len(experts_per_layer):
        raise ValueError(
            f"activated_parameters: {len(experts_per_layer)} expert counts "
            f"for {len(moes)} MoE layers"
        )
    skip = {
        id(p) for name, p in model.named_parameters() if name.split(".")[0] in ("embed", "lm_head")
    }
    expert_ids = {id(p) for moe in moes for p in moe.experts.parameters()}
    shared = sum(
        p.numel() for p in model.parameters() if id(p) not in skip and id(p) not in expert_ids
    )
    per_expert = [
        sum(p.numel() for p in moe.experts.parameters()) / moe.num_experts for moe in moes
    ]
    active = shared + sum(n * k for n, k in zip(per_expert, experts_per_layer, strict=True))
    top2 = shared + sum(n * 2 for n in per_expert)
    mean_k = sum(experts_per_layer) / max(len(experts_per_layer), 1)
    return {
        "activated_params": float(active),
        "activated_params_top2": float(top2),
        "activated_param_ratio": active / top2,
        "expert_param_ratio": mean_k / 2.0,
        "total_params": float(sum(p.numel() for p in model.parameters())),
    }


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    tokens: np.ndarray,
    batch_size: int = 16,
    seq_len: int = 128,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Evaluate a DynMoE-style model on ordered, non-overlapping windows of ``tokens``.

    Args:
        model: returns an output with ``lm_loss`` and ``experts_per_layer`` given
            ``(input_ids [B, T], labels [B, T])``.
        tokens: 1-D validation ids ``[L]``.
        batch_size, seq_len: window shape; max_batches: stop early (None: all windows).

    Returns:
        dict: ``val_loss`` (token-weighted mean cross-entropy, nats), ``perplexity``,
        ``mean_experts_per_token``, ``experts_per_layer`` (list), ``tokens_per_second``
        (forward passes only), ``eval_tokens``, plus :func:`activated_parameters`.

    Example:
        >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
        >>> m = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=1,
        ...                                    n_heads=2, d_ff=16, num_experts=4))
        >>> r = evaluate_model(m, np.arange(200) % 32, batch_size=4, seq_len=8)
        >>> r["eval_tokens"], r["experts_per_layer"]
        (192, [2.0])
    """
    was_training = model.training
    model.eval()
    loss_sum, n_tokens = 0.0, 0
    experts_sum: torch.Tensor | None = None
    seconds = 0.0
    for x, y in iter_eval_batches(tokens, batch_size, seq_len, max_batches):
        start = time.perf_counter()
        out = model(x, labels=y)
        seconds += time.perf_counter() - start
        n = y.numel()
        loss_sum += out.lm_loss.item() * n
        experts = out.experts_per_layer.double() * n
        experts_sum = experts if experts_sum is None else experts_sum + experts
        n_tokens += n
    model.train(was_training)
    if n_tokens == 0 or experts_sum is None:
        raise ValueError("evaluate_model: no validation windows; use a shorter seq_len")
    per_layer = (experts_sum / n_tokens).tolist()
    val_loss = loss_sum / n_tokens
    result: dict[str, Any] = {
        "val_loss": val_loss,
        "perplexity": math.exp(min(val_loss, 50.0)),
        "mean_experts_per_token": sum(per_layer) / max(len(per_layer), 1),
        "experts_per_layer": per_layer,
        "tokens_per_second": n_tokens / max(seconds, 1e-9),
        "eval_tokens": n_tokens,
    }
    result.update(activated_parameters(model, per_layer))
    return result


# ------------------------------------------------------------------ checkpoint dispatch


@dataclass
class LoadedCheckpoint:
    """A model ready to evaluate and the data config it was trained on.

    Attributes:
        model: the model (eval mode).
        data: where its validation tokens come from.
        seq_len, batch_size: the shapes it was trained with (defaults for evaluation).
        kind: the loader that produced it (e.g. ``"dynroute-run"``).
    """

    model: nn.Module
    data: DataConfig
    seq_len: int = 128
    batch_size: int = 16
    kind: str = ""


Detector = Callable[[Path], bool]
Loader = Callable[[Path], LoadedCheckpoint]
CHECKPOINT_LOADERS: list[tuple[str, Detector, Loader]] = []
"""(kind, detect(path) -> bool, load(path) -> LoadedCheckpoint), tried in order."""


def register_checkpoint_loader(
    kind: str, detect: Detector, load: Loader, first: bool = False
) -> None:
    """Teach :func:`evaluate_checkpoint` a new checkpoint type.

    Example:
        >>> register_checkpoint_loader("never", lambda p: False, lambda p: None)  # doctest: +SKIP
    """
    entry = (kind, detect, load)
    CHECKPOINT_LOADERS.insert(0, entry) if first else CHECKPOINT_LOADERS.append(entry)


def _is_run_dir(path: Path) -> bool:
    return (path / "run.json").is_file() and (
        (path / "model" / "config.json").is_file() or (path / "checkpoint.pt").is_file()
    )


def _load_run_dir(path: Path) -> LoadedCheckpoint:
    from dynroute.models import DynMoEConfig, DynMoEForCausalLM
    from dynroute.train.checkpoint import load_checkpoint

    cfg = RunConfig.from_dict(json.loads((path / "run.json").read_text()), str(path / "run.json"))
    if (path / "model" / "config.json").is_file():
        model = _from_pretrained(path / "model")
    else:  # killed before the first export: use the training checkpoint itself
        state = load_checkpoint(path / "checkpoint.pt")
        model = DynMoEForCausalLM(DynMoEConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    return LoadedCheckpoint(
        model.eval(), cfg.data, cfg.train.seq_len, cfg.train.batch_size, "dynroute-run"
    )


def _is_model_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("model_type") == "dynmoe"


def _from_pretrained(path: Path) -> nn.Module:
    from transformers.utils import logging as hf_logging

    from dynroute.models import DynMoEForCausalLM

    hf_logging.disable_progress_bar()
    return DynMoEForCausalLM.from_pretrained(path)


def _load_model_dir(path: Path) -> LoadedCheckpoint:
    data = DataConfig()
    if (path / DATA_FILE).is_file():
        data = DataConfig(**json.loads((path / DATA_FILE).read_text()))
    model = _from_pretrained(path)
    seq_len = min(128, int(model.config.max_seq_len))
    return LoadedCheckpoint(model.eval(), data, seq_len, 16, "dynmoe-model")


register_checkpoint_loader("dynroute-run", _is_run_dir, _load_run_dir)
register_checkpoint_loader("dynmoe-model", _is_model_dir, _load_model_dir)


def load_any_checkpoint(path: Path | str) -> LoadedCheckpoint:
    """Load ``path`` with the first registered loader that recognises it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a run folder from `dynroute train`")
    for _kind, detect, load in CHECKPOINT_LOADERS:
        if detect(path):
            return load(path)
    kinds = ", ".join(kind for kind, _, _ in CHECKPOINT_LOADERS)
    raise ValueError(
        f"{path} is not a checkpoint dynroute can evaluate (known kinds: {kinds}); pass the "
        "--out folder of `dynroute train` or its model/ subfolder"
    )


def evaluate_checkpoint(
    path: Path | str,
    data: str | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the validation split of its training data.

    Args:
        path: a ``dynroute train`` output folder, or its ``model/`` folder.
        data: evaluate on the validation split of another corpus, encoded with the
            run's own tokenizer (a tokenizer trained on that corpus would make the loss
            meaningless for this model).
        batch_size, seq_len: override the run's shapes; max_batches: cap the windows.

    Returns:
        dict: :func:`evaluate_model`'s metrics plus ``checkpoint``, ``kind``, ``router``.

    Example:
        >>> evaluate_checkpoint("runs/tiny")["val_loss"]  # doctest: +SKIP
        5.1
    """
    loaded = load_any_checkpoint(path)
    prepared = load_data(loaded.data)
    val_tokens = prepared.val_tokens
    if data is not None:
        source = None if data in ("", "stdlib") else data
        docs = load_corpus(source, "validation", text_column=loaded.data.text_column)
        val_tokens = encode_documents(prepared.tokenizer, docs)
    result = evaluate_model(
        loaded.model,
        val_tokens,
        batch_size or loaded.batch_size,
        seq_len or loaded.seq_len,
        max_batches,
    )
    config = getattr(loaded.model, "config", None)
    router = getattr(config, "router", None)
    if router is not None:
        router = make_router(router).describe()  # type: ignore[union-attr]
    return {"checkpoint": str(path), "kind": loaded.kind, "router": router, **result}
