"""Evaluation of DynMoE models: validation loss, perplexity, experts per token, parameters.

``evaluate_checkpoint(path)`` is ``dynroute eval`` for dynroute's own models: it loads
through :func:`dynroute.checkpoints.load_model` and runs :func:`evaluate_model`, which
is :func:`dynroute.evaluation.evaluate_lm` plus the experts each token used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from dynroute.checkpoints import LoadedModel, is_own_model_type, load_model, router_text
from dynroute.data import eval_windows, iter_eval_batches
from dynroute.evaluation import evaluate_lm

__all__ = ["activated_parameters", "evaluate_checkpoint", "evaluate_model"]


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


def evaluate_model(
    model: nn.Module,
    tokens: np.ndarray,
    batch_size: int = 16,
    seq_len: int = 128,
    max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a DynMoE-style model on non-overlapping windows of ``tokens``.

    Args:
        model: returns an output with ``logits`` and ``experts_per_layer`` given
            ``input_ids [B, T]``.
        tokens: 1-D validation ids ``[L]``, or windows already cut ``[n, seq_len + 1]``
            (``dynroute.data.eval_windows``).
        batch_size, seq_len: window shape; max_batches: ``max_batches * batch_size``
            windows evenly spaced over ``tokens`` (None: all windows).
        progress: show a progress bar.

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
    experts: list[Tensor] = []  # per batch: experts per token of each layer x tokens

    def count(output: Any, losses: Tensor) -> None:
        experts.append(output.experts_per_layer.double() * losses.numel())

    windows = tokens if tokens.ndim == 2 else eval_windows(tokens, seq_len)
    n_batches = -(-windows.shape[0] // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    run = evaluate_lm(
        model,
        iter_eval_batches(windows, batch_size, seq_len, max_batches),
        after_batch=count,
        progress=progress,
        total=n_batches,
    )
    if run.tokens == 0:
        raise ValueError("evaluate_model: no validation windows; use a shorter seq_len")
    per_layer = (sum(experts) / run.tokens).tolist()
    result: dict[str, Any] = {
        "val_loss": run.loss,
        "perplexity": math.exp(min(run.loss, 50.0)),
        "mean_experts_per_token": sum(per_layer) / max(len(per_layer), 1),
        "experts_per_layer": per_layer,
        "tokens_per_second": run.tokens_per_second,
        "eval_tokens": run.tokens,
    }
    result.update(activated_parameters(model, per_layer))
    return result


def evaluate_checkpoint(
    path: Path | str | LoadedModel,
    data: str | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint; by default on the evaluation set its training scored.

    Without ``data``, ``seq_len`` or ``max_batches`` that is the run's evaluation set
    (:meth:`~dynroute.checkpoints.LoadedModel.eval_set`: ``eval_batches * batch_size``
    windows evenly spaced over the validation split, saved in ``model/``), so the loss
    is the one in ``metrics.jsonl``; ``dynroute analyze`` uses the same windows.

    Args:
        path: a ``dynroute train`` output folder, its ``model/`` folder (or what
            :func:`dynroute.checkpoints.load_model` returned for one).
        data: evaluate on another text, encoded with the run's own tokenizer: a file is
            read whole, a folder or saved dataset by its validation split (as
            ``dynroute.hf.evaluate_text`` reads it).
        batch_size, seq_len: override the run's shapes; max_batches: this many batches
            of windows evenly spaced over the validation split (or ``data``).
        progress: show a progress bar.

    Returns:
        dict: :func:`evaluate_model`'s metrics plus ``checkpoint``, ``kind``, ``router``
        and ``eval_set`` (which tokens were scored, in words).

    Example:
        >>> evaluate_checkpoint("runs/tiny")["val_loss"]  # doctest: +SKIP
        5.1
    """
    loaded = path if isinstance(path, LoadedModel) else load_model(path)
    config = loaded.model.config
    if not is_own_model_type(getattr(config, "model_type", None)):
        raise ValueError(
            f"{path}: evaluate_checkpoint reads dynroute models; evaluate a transformers "
            "checkpoint with dynroute.hf.evaluate_text"
        )
    default = data is None and seq_len in (None, loaded.seq_len) and max_batches is None
    tokens = loaded.eval_set() if default else loaded.tokens(data)
    batch_size, seq_len = batch_size or loaded.batch_size, seq_len or loaded.seq_len
    result = evaluate_model(loaded.model, tokens, batch_size, seq_len, max_batches, progress)
    if default:
        where = "the run's evaluation set (as in training)"
    elif data is None:
        where = "the validation split"
    elif Path(data).is_file():
        where = f"{data} (the whole file)"
    else:
        where = f"{data} (validation split)"
    name = loaded.folder if isinstance(path, LoadedModel) else path
    return {
        "checkpoint": str(name),
        "kind": loaded.kind,
        "router": router_text(loaded.model),
        **result,
        "eval_set": f"{where}: {result['eval_tokens']:,} tokens in {seq_len}-token windows",
    }
