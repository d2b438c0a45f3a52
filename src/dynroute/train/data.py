"""The thin bridge from a :class:`DataConfig` to ``dynroute.data.prepare_data``."""

from __future__ import annotations

import dataclasses
import json

from dynroute.checkpoints import DATA_FILE, prepare_run_data
from dynroute.data import PreparedData
from dynroute.train.config import DataConfig

__all__ = ["DATA_FILE", "data_json", "load_data"]


def load_data(cfg: DataConfig) -> PreparedData:
    """Prepare (or read from cache) the tokenizer and token memmaps of ``cfg``.

    Example:
        >>> load_data(DataConfig(max_train_bytes=200_000)).vocab_size  # doctest: +SKIP
        4096
    """
    return prepare_run_data(dataclasses.asdict(cfg))


def data_json(cfg: DataConfig) -> str:
    """The config as JSON text (stored next to exported weights).

    Example:
        >>> json.loads(data_json(DataConfig()))["source"]
        'stdlib'
    """
    return json.dumps(dataclasses.asdict(cfg), indent=2)
