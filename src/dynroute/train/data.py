"""The thin bridge from a :class:`DataConfig` to ``dynroute.data.prepare_data``."""

from __future__ import annotations

import dataclasses
import json

from dynroute.data import PreparedData, prepare_data
from dynroute.train.config import DataConfig

__all__ = ["DATA_FILE", "data_json", "load_data"]

DATA_FILE = "dynroute_data.json"
"""Written into exported model folders so ``dynroute eval`` finds the right corpus."""


def load_data(cfg: DataConfig) -> PreparedData:
    """Prepare (or read from cache) the tokenizer and token memmaps of ``cfg``.

    Example:
        >>> load_data(DataConfig(max_train_bytes=200_000)).vocab_size  # doctest: +SKIP
        4096
    """
    source = None if cfg.source in ("", "stdlib") else cfg.source
    return prepare_data(
        source,
        vocab_size=cfg.vocab_size,
        max_train_bytes=cfg.max_train_bytes,
        max_val_bytes=cfg.max_val_bytes,
        text_column=cfg.text_column,
    )


def data_json(cfg: DataConfig) -> str:
    """The config as JSON text (stored next to exported weights).

    Example:
        >>> json.loads(data_json(DataConfig()))["source"]
        'stdlib'
    """
    return json.dumps(dataclasses.asdict(cfg), indent=2)
