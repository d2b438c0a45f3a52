"""Stages 1 and 3 through the one training recipe: ``dynroute.train.train`` with hooks.

Only the model, the router temperature per step and a few logged numbers differ;
checkpoints, resume, evaluation and metrics are ``dynroute train``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from dynroute.adaptive.config import AdaptiveConfig
from dynroute.adaptive.model import AdaptiveForCausalLM, AdaptiveOutput
from dynroute.common.numbers import format_number
from dynroute.train import RunConfig, TrainResult, load_config
from dynroute.train import train as run_training
from dynroute.train.hooks import TrainHooks

__all__ = [
    "adaptive_hooks",
    "build_model",
    "load_adaptive_config",
    "progress_text",
    "train_adaptive",
]


def load_adaptive_config(path: Path | str) -> RunConfig:
    """A TOML run config whose ``[model]`` holds :class:`AdaptiveConfig` fields.

    Example:
        >>> load_adaptive_config("configs/adaptive_tiny.toml").model["routing"]  # doctest: +SKIP
        'random'
    """
    return load_config(path, model_config=AdaptiveConfig)


def build_model(cfg: RunConfig, vocab_size: int, max_seq_len: int) -> AdaptiveForCausalLM:
    """The run's model; with ``init_from``, its weights (routers excepted) from that run.

    ``train_routers_only`` freezes everything but the routers (stage 3 on top of a
    random-routing model, as in Duo-LLM).
    """
    config = AdaptiveConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, **cfg.model)
    model = AdaptiveForCausalLM(config)
    if config.init_from:
        from dynroute.checkpoints import load_model

        source = load_model(config.init_from).model
        if not isinstance(source, AdaptiveForCausalLM):
            raise ValueError(
                f"init_from {config.init_from}: not an adaptive model "
                f"({type(source).__name__}); pass a `dynroute adaptive train` run folder"
            )
        if source.config.vocab_size != vocab_size or source.config.d_model != config.d_model:
            raise ValueError(
                f"init_from {config.init_from}: vocabulary {source.config.vocab_size} / width "
                f"{source.config.d_model} differ from this run's {vocab_size} / {config.d_model}; "
                "use the same [data] and [model] sizes"
            )
        # The routers start fresh: a random-routing run's gates were never trained.
        state = {k: v for k, v in source.state_dict().items() if ".ffn.gate." not in k}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(".ffn.gate." not in k for k in missing):
            raise ValueError(
                f"init_from {config.init_from}: weights do not fit this model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); use the same sizes"
            )
    if config.train_routers_only:
        for name, p in model.named_parameters():
            p.requires_grad_(".ffn.gate." in name)
    return model


def _before_step(model: nn.Module, step: int, total: int) -> None:
    assert isinstance(model, AdaptiveForCausalLM)
    model.set_temperature(model.config.temperature_at(step, total))


def _log_extra(model: nn.Module, out: Any) -> dict[str, Any]:
    assert isinstance(out, AdaptiveOutput)
    row: dict[str, Any] = {"big_per_layer": out.big_per_layer.tolist()}
    row["big_share"] = float(out.big_per_layer.mean())
    if out.p_big is not None:
        row["p_big_per_layer"] = out.p_big.tolist()
        row["p_big"] = float(out.p_big.mean())
        row["budget_loss"] = float(out.budget_loss)  # type: ignore[arg-type]
        row["temperature"] = float(model.temperature)  # type: ignore[arg-type]
    return row


def progress_text(row: Mapping[str, Any]) -> str:
    """The progress bar's numbers for a logged training row of an adaptive model.

    DynMoE's bar shows experts per token; here every layer runs exactly one module (or
    none), so that is always 1. What varies is the share of (token, layer) pairs that run
    the *big* module, the share that skip the layer (``1 -`` modules run per token and
    layer), and with a router, its mean probability of big and its temperature.

    Example:
        >>> progress_text({"lm_loss": 3.21, "tokens_per_second": 5120.0,
        ...                "mean_experts_per_token": 0.9, "big_share": 0.5})
        'loss 3.210  5,120 tok/s  big 50.0%  skip 10.0%'
        >>> progress_text({"lm_loss": 3.21, "tokens_per_second": 5120.0,
        ...                "mean_experts_per_token": 1.0, "big_share": 0.25, "p_big": 0.3,
        ...                "temperature": 0.5})
        'loss 3.210  5,120 tok/s  big 25.0%  P(big) 0.30  T 0.50'
    """
    text = (
        f"loss {format_number(row['lm_loss'], '.3f')}  "
        f"{format_number(row['tokens_per_second'], ',.0f')} tok/s  "
        f"big {format_number(row['big_share'], '.1%')}"
    )
    skip = 1.0 - float(row["mean_experts_per_token"])
    if skip >= 0.0005:  # shows as at least 0.1 %
        text += f"  skip {format_number(skip, '.1%')}"
    if "p_big" in row:
        text += f"  P(big) {format_number(row['p_big'], '.2f')}"
        text += f"  T {format_number(row['temperature'], '.2f')}"
    return text


def adaptive_hooks() -> TrainHooks:
    """The :class:`~dynroute.train.hooks.TrainHooks` of adaptive runs.

    Example:
        >>> adaptive_hooks().build_model is build_model, adaptive_hooks().progress_text
        (True, <function progress_text at ...>)
    """
    return TrainHooks(
        build_model=build_model,
        before_step=_before_step,
        log_extra=_log_extra,
        progress_text=progress_text,
    )


def train_adaptive(
    cfg: RunConfig,
    out_dir: Path | str,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) an adaptive model into ``out_dir``, exactly as ``dynroute train``.

    Example:
        >>> cfg = load_adaptive_config("configs/adaptive_tiny.toml")  # doctest: +SKIP
        >>> train_adaptive(cfg, "runs/adaptive")  # doctest: +SKIP
    """
    return run_training(
        cfg,
        out_dir,
        progress=progress,
        label=f"adaptive ({cfg.model.get('routing', 'random')})",
        stop_after=stop_after,
        hooks=adaptive_hooks(),
    )
