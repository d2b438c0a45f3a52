"""What a model family other than DynMoE changes in the one training recipe.

``dynroute.train.train(cfg, out, hooks=TrainHooks(...))`` keeps everything else:
optimizer, schedule, checkpoints, resume, evaluation, metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["TrainHooks"]


@dataclass(frozen=True)
class TrainHooks:
    """Optional callbacks of :func:`dynroute.train.train`.

    Attributes:
        build_model: ``(cfg, vocab_size, max_seq_len) -> model`` with a ``.config``
            (a transformers ``PreTrainedModel`` whose forward takes ``labels`` and returns
            ``loss``, ``lm_loss``, ``aux_loss``, ``experts_per_layer``); called after
            ``torch.manual_seed(seed)``, before the optimizer sees its parameters (so it
            may freeze some). Default: ``DynMoEForCausalLM(DynMoEConfig(**cfg.model))``.
        before_step: ``(model, step, total_steps)`` before each forward (e.g. anneal a
            temperature; a function of the step, so resuming reproduces it).
        log_extra: ``(model, output) -> dict`` merged into each logged training row.

    Example:
        >>> TrainHooks().build_model is None
        True
    """

    build_model: Callable[[Any, int, int], nn.Module] | None = None
    before_step: Callable[[nn.Module, int, int], None] | None = None
    log_extra: Callable[[nn.Module, Any], dict[str, Any]] | None = None
