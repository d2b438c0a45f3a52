"""What a model family other than DynMoE changes in the one training recipe.

``dynroute.train.train(cfg, out, hooks=TrainHooks(...))`` keeps everything else: the
optimizer, schedule, data sampler, checkpoints, resume, progress bar, validation
schedule, ``metrics.jsonl`` and Ctrl-C. ``dynroute.adaptive`` changes the model, a
per-step temperature and the logged numbers; ``dynroute.lora`` the data (a mixture of
domains), the model (adapters on a frozen base), the loss, the evaluation (per domain),
what a checkpoint keeps (the adapters) and the export (an adapter folder).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

from dynroute.routing.state import step_routers

__all__ = ["StepOutput", "TrainData", "TrainHooks", "moe_progress_text"]


class TrainData(Protocol):
    """What the recipe reads of the data (``dynroute.data.PreparedData`` is one).

    ``train.batch(rows, seq_len, generator=g)`` returns ``(x, y)`` LongTensors
    ``[rows, seq_len]`` drawn with ``g`` only (so a resumed run draws the same batches).
    """

    vocab_size: int

    @property
    def train(self) -> Any: ...


class StepOutput(Protocol):
    """What one forward of a training micro-batch returns (a ``DynMoEOutput`` is one).

    ``loss`` is what is minimised; ``lm_loss`` and ``aux_loss`` (scalars) and
    ``experts_per_layer`` (``[L]``, mean experts per token of each routed layer) are logged.
    """

    loss: Tensor
    lm_loss: Tensor
    aux_loss: Tensor
    experts_per_layer: Tensor


@dataclass(frozen=True)
class TrainHooks:
    """Optional callbacks of :func:`dynroute.train.train`; each default is DynMoE's.

    Attributes:
        load_data: ``(cfg) -> TrainData``. Default: the ``[data]`` corpus
            (:func:`dynroute.train.data.load_data`).
        build_model: ``(cfg, vocab_size, max_seq_len) -> model`` with a ``.config``;
            called after ``torch.manual_seed(seed)``, before the optimizer sees the
            parameters with ``requires_grad`` (those are the ones that train, so it may
            freeze some). Default: ``DynMoEForCausalLM(DynMoEConfig(**cfg.model))``.
        compute_loss: ``(model, x, y) -> StepOutput`` for one micro-batch. Default:
            ``model(x, labels=y)``.
        before_step: ``(model, step, total_steps)`` before each forward (e.g. anneal a
            temperature; a function of the step, so resuming reproduces it).
        after_step: ``(model, step, total_steps)`` after each optimizer step. Default:
            :func:`~dynroute.routing.state.step_routers` (the routers' controllers and
            schedules); None leaves every router state as it is (a frozen base).
        log_extra: ``(model, output) -> dict`` merged into each logged training row.
        evaluate: ``(model, data, train_cfg) -> dict`` of one validation pass, merged into
            the ``eval`` rows; the final one is :class:`~dynroute.train.TrainResult`'s
            ``final``. Default: :func:`~dynroute.train.evaluate_model` on the validation
            split (``val_loss``, ``perplexity``, experts per token, ...).
        export: ``(model, out_dir)`` after every checkpoint: what other programs read.
            Default: ``out_dir/model``, a self-contained transformers folder.
        trainable_only: the checkpoint keeps only the parameters that train (adapters on
            a frozen base that ``build_model`` rebuilds), not the whole state dict.
        run_identity: entries written to ``run.json`` beside the config tables that a
            rerun must match as well (e.g. the base model's folder).
        progress_text: ``(row) -> str``: the progress bar's numbers for a logged training
            row. Default: :func:`moe_progress_text` (loss, tok/s, experts per token).

    Example:
        >>> TrainHooks().build_model is None, TrainHooks().after_step is step_routers
        (True, True)
    """

    load_data: Callable[[Any], TrainData] | None = None
    build_model: Callable[[Any, int, int], nn.Module] | None = None
    compute_loss: Callable[[nn.Module, Tensor, Tensor], StepOutput] | None = None
    before_step: Callable[[nn.Module, int, int], None] | None = None
    after_step: Callable[[nn.Module, int, int], None] | None = step_routers
    log_extra: Callable[[nn.Module, Any], dict[str, Any]] | None = None
    evaluate: Callable[[nn.Module, Any, Any], dict[str, Any]] | None = None
    export: Callable[[nn.Module, Path], None] | None = None
    trainable_only: bool = False
    run_identity: Mapping[str, Any] = field(default_factory=dict)
    progress_text: Callable[[Mapping[str, Any]], str] | None = None


def moe_progress_text(row: Mapping[str, Any]) -> str:
    """The progress bar's numbers for a logged training row of an MoE model.

    Example:
        >>> moe_progress_text({"lm_loss": 3.21, "tokens_per_second": 5120.0,
        ...                    "mean_experts_per_token": 1.5})
        'loss 3.210  5,120 tok/s  1.50 experts/token'
    """
    return (
        f"loss {row['lm_loss']:.3f}  {row['tokens_per_second']:,.0f} tok/s  "
        f"{row['mean_experts_per_token']:.2f} experts/token"
    )
