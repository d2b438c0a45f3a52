"""The LoRA-experts recipe: a frozen base, adapters trained on a mixture of domains.

It is the one training engine, ``dynroute.train.train``, with :func:`lora_hooks`: the
data is a mixture of domains, the model the base with adapters, the loss the language
model loss plus the adapters' router losses, the evaluation per domain, a checkpoint
keeps the adapters only and the export is ``adapters/``. Resume, the progress bar,
validation, ``metrics.jsonl`` and Ctrl-C are ``dynroute train``'s.

A run folder holds ``run.json`` (the config and the base; a rerun with another config
is refused), ``checkpoint.pt`` (adapters, optimizer, step, RNG states: rerun the command
to resume), ``adapters/`` (:func:`~dynroute.lora.save_lora_experts` output),
``metrics.jsonl`` and ``result.json`` (per-domain validation loss, experts per token,
expert usage). The base is read with ``dynroute.checkpoints.load_model`` (any folder
``dynroute eval`` reads).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynroute.checkpoints import LoadedModel, load_model
from dynroute.common.jsonfile import write_json
from dynroute.data import iter_eval_batches
from dynroute.evaluation import evaluate_lm, logits_of
from dynroute.lora.apply import add_lora_experts, save_lora_experts, trainable_parameters
from dynroute.lora.config import LoRAConfig, LoRADataConfig, LoRARunConfig, load_lora_config
from dynroute.lora.data import DomainTokens, tokenize_domains
from dynroute.lora.layer import lora_aux_loss, lora_layers
from dynroute.train import TrainConfig, TrainHooks, train

__all__ = [
    "ADAPTERS_DIR",
    "LoRAConfig",
    "LoRADataConfig",
    "LoRARunConfig",
    "LoRAStepOutput",
    "evaluate_domains",
    "load_lora_config",
    "lora_hooks",
    "lora_loss",
    "train_lora",
]

ADAPTERS_DIR = "adapters"


def train_lora(
    cfg: LoRARunConfig,
    base: Path | str,
    out: Path | str,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train LoRA experts on ``base`` (frozen) into ``out``; rerun to resume.

    Args:
        cfg: the run config; base: a model folder ``load_model`` reads (e.g. the --out of
            ``dynroute train``); out: run folder; progress: a rich progress bar on stderr;
        stop_after: checkpoint and stop after this many steps (tests).

    Returns:
        ``result.json``'s content: per-domain evaluation, trainable parameters, steps
        (``{"steps", "stopped": True, "resumed_from"}`` when stopped early).

    Raises:
        TrainingInterrupted: Ctrl-C inside ``dynroute.train.stop_on_sigint``, after a
            checkpoint.

    Example:
        >>> cfg = load_lora_config("configs/lora_tiny.toml")          # doctest: +SKIP
        >>> train_lora(cfg, "runs/tiny", "runs/lora")["domains"]       # doctest: +SKIP
    """
    started = time.perf_counter()
    base, out = Path(base), Path(out)
    loaded = load_model(base)  # raises FileNotFoundError naming the folder
    _check_seq_len(loaded, cfg.train.seq_len, base)
    label = f"lora ({cfg.lora.kind})"
    run = train(cfg, out, progress, label, stop_after, hooks=lora_hooks(loaded, base))
    if run.final is None:
        return {"steps": run.steps, "stopped": True, "resumed_from": run.resumed_from}
    result = {
        "steps": run.steps,
        "resumed_from": run.resumed_from,
        "trainable_parameters": trainable_parameters(loaded.model),
        "router": cfg.router_spec(),
        "kind": cfg.lora.kind,
        "domains": run.final["domains"],
        "seconds": time.perf_counter() - started,
    }
    write_json(out / "result.json", result)
    return result


def lora_hooks(base: LoadedModel, folder: Path) -> TrainHooks:
    """The :class:`~dynroute.train.TrainHooks` of a LoRA run on ``base`` (read from
    ``folder``): its model gets adapters, the rest stays frozen (its routers too)."""
    return TrainHooks(
        load_data=functools.partial(_load_data, base),
        build_model=functools.partial(_add_adapters, base.model, folder),
        compute_loss=lora_loss,
        after_step=None,  # the frozen base's router states stay as they are
        evaluate=_evaluate,
        export=_export,
        trainable_only=True,
        run_identity={"base": str(folder.resolve())},
    )


def _check_seq_len(base: LoadedModel, seq_len: int, folder: Path) -> None:
    config = base.model.config
    limit = int(getattr(config, "max_seq_len", 0) or
                getattr(config, "max_position_embeddings", 10**9))  # fmt: skip
    if seq_len > limit:
        raise ValueError(f"[train] seq_len {seq_len} exceeds the limit {limit} of the base "
                         f"model {folder}; lower seq_len in the config")  # fmt: skip


def _load_data(base: LoadedModel, cfg: LoRARunConfig) -> DomainTokens:
    vocab_size = int(getattr(base.model.config, "vocab_size", 0))
    return tokenize_domains(cfg.data, base.tokenizer, cfg.train.seq_len, vocab_size)


def _add_adapters(model: nn.Module, folder: Path, cfg: LoRARunConfig, *_shape: int) -> nn.Module:
    """The base with adapters (after ``torch.manual_seed``: the adapters' init is seeded)."""
    try:
        return _adapted(model, cfg)
    except ValueError as err:  # e.g. targets named for another family: say which base
        raise ValueError(f"[lora] does not fit the base model {folder}: {err}") from None


def _adapted(model: nn.Module, cfg: LoRARunConfig) -> nn.Module:
    lc = cfg.lora
    if lc.kind == "peft":  # the reference: one plain LoRA trained through peft
        from peft import LoraConfig, get_peft_model

        peft_config = LoraConfig(
            r=lc.rank, lora_alpha=lc.alpha, target_modules=lc.targets, lora_dropout=0.0
        )
        return get_peft_model(model, peft_config)  # type: ignore[no-any-return]
    return add_lora_experts(model, lc.targets, lc.num_experts, lc.rank, lc.alpha,
                            router=cfg.router_spec(), kind=lc.kind)  # fmt: skip


@dataclass
class LoRAStepOutput:
    """One micro-batch of a LoRA run (what the training engine logs and minimises).

    Attributes:
        loss: lm_loss + aux_loss; lm_loss: next-token cross-entropy (float32);
        aux_loss: the adapters' router losses; experts_per_layer: ``[L]`` mean experts
        per token of each wrapped linear.
    """

    loss: Tensor
    lm_loss: Tensor
    aux_loss: Tensor
    experts_per_layer: Tensor


def lora_loss(model: nn.Module, x: Tensor, y: Tensor) -> LoRAStepOutput:
    """Cross-entropy of ``model(x)`` against ``y`` (``[B, T]`` each) plus the adapters'
    router losses; the base's own auxiliary losses are not trained against (it is frozen).

    Example:
        >>> m = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8))
        >>> _ = add_lora_experts(m, ["1"], num_experts=2, rank=1, router="top_k:k=1")
        >>> out = lora_loss(m, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3).long())
        >>> out.loss.shape, out.experts_per_layer.tolist()
        (torch.Size([]), [1.0])
    """
    logits = logits_of(model(x))
    lm_loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    aux_loss = lora_aux_loss(model)
    loss = lm_loss + aux_loss
    layers = lora_layers(model).values()
    k = [m.last_routing.mean_experts() for m in layers if m.last_routing is not None]
    per_layer = torch.tensor(k, dtype=torch.float32)
    return LoRAStepOutput(loss, lm_loss, aux_loss.to(loss.device), per_layer)


def _evaluate(model: nn.Module, data: DomainTokens, t: TrainConfig) -> dict[str, Any]:
    domains = evaluate_domains(model, data.val, t.batch_size, t.seq_len, t.eval_batches)
    losses = {f"val_loss/{n}": r["loss"] for n, r in domains.items()}
    return {**losses, "domains": domains}


def _export(model: nn.Module, out: Path) -> None:
    if hasattr(model, "peft_config"):  # kind = "peft": a peft adapter folder
        model.save_pretrained(out / ADAPTERS_DIR)  # type: ignore[operator]
    else:
        save_lora_experts(model, out / ADAPTERS_DIR)


@torch.no_grad()
def evaluate_domains(
    model: nn.Module,
    val: dict[str, np.ndarray],
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Per domain: validation loss, mean experts per token and each expert's share.

    Experts per token and usage are averaged over the wrapped linears (all have E).

    Returns:
        ``{domain: {"loss", "tokens", "experts_per_token", "expert_share": [E]}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    layers = list(lora_layers(model).values())
    for name, tokens in val.items():
        stats = {"assignments": 0.0, "tokens": 0, "counts": None}

        def record(_output: Any, _losses: torch.Tensor, stats: dict = stats) -> None:
            for layer in layers:
                r = layer.last_routing
                if r is None:
                    continue
                stats["assignments"] += r.num_assignments / len(layers)
                counts = r.expert_counts().double()
                stats["counts"] = counts if stats["counts"] is None else stats["counts"] + counts
            stats["tokens"] += _losses.numel()

        batches = iter_eval_batches(tokens, batch_size, seq_len, max_batches)
        result = evaluate_lm(model, batches, after_batch=record)
        counts = stats["counts"]
        share = (counts / counts.sum()).tolist() if counts is not None and counts.sum() else []
        out[name] = {
            "loss": result.loss,
            "tokens": result.tokens,
            "experts_per_token": stats["assignments"] / max(stats["tokens"], 1),
            "expert_share": share,
        }
    return out
