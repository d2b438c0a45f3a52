"""The one training engine (DynMoE; adaptive and LoRA models through hooks), checkpoints
and evaluation.

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
from dynroute.train.hooks import TrainHooks
from dynroute.train.interrupt import TrainingInterrupted, stop_on_sigint
from dynroute.train.loop import TrainResult, train
from dynroute.train.metrics import MetricsLog, read_metrics
from dynroute.train.runfolder import ConfigMismatchError
from dynroute.train.schedule import lr_at

__all__ = [
    "ConfigMismatchError",
    "DataConfig",
    "MetricsLog",
    "RunConfig",
    "TrainConfig",
    "TrainHooks",
    "TrainResult",
    "TrainingInterrupted",
    "activated_parameters",
    "apply_overrides",
    "evaluate_checkpoint",
    "evaluate_model",
    "export_model",
    "load_checkpoint",
    "load_config",
    "lr_at",
    "read_metrics",
    "stop_on_sigint",
    "train",
]
