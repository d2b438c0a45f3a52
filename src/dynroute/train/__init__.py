"""Training recipe, checkpoints and evaluation for the DynMoE language model.

Example:
    >>> from dynroute.train import RunConfig, load_config, train, evaluate_checkpoint
    >>> cfg = load_config("configs/tiny.toml")             # doctest: +SKIP
    >>> result = train(cfg, "runs/tiny")                    # doctest: +SKIP
    >>> evaluate_checkpoint("runs/tiny")["perplexity"]      # doctest: +SKIP
"""

from dynroute.train.checkpoint import export_model, load_checkpoint
from dynroute.train.config import (
    DataConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)
from dynroute.train.evaluate import activated_parameters, evaluate_checkpoint, evaluate_model
from dynroute.train.loop import ConfigMismatchError, TrainResult, train
from dynroute.train.metrics import MetricsLog, read_metrics
from dynroute.train.schedule import lr_at

__all__ = [
    "ConfigMismatchError",
    "DataConfig",
    "MetricsLog",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "activated_parameters",
    "apply_overrides",
    "evaluate_checkpoint",
    "evaluate_model",
    "export_model",
    "load_checkpoint",
    "load_config",
    "lr_at",
    "read_metrics",
    "train",
]
