"""The one checkpoint loader: any model folder dynroute reads, with its tokenizer and text.

:func:`load_model` recognises, in order: a ``dynroute train`` run folder (``run.json``
+ ``model/`` or ``checkpoint.pt``), a folder of ``DynMoEForCausalLM`` weights (its
``model/`` export carries ``dynroute_data.json``; others may have a ``tokenizer.json``),
and a transformers MoE checkpoint ``dynroute.hf`` adapts (patched or not). A folder with
none of these is searched for a sub-folder with a ``config.json`` (``final``, ``best``, ...).
``dynroute eval``, ``dynroute analyze`` and ``dynroute.train`` all load through it; it reads
the run's files itself, so analysis never imports ``dynroute.train``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynroute.data import PreparedData, encode_documents, load_corpus, prepare_data

__all__ = [
    "CHECKPOINT_NAMES",
    "DATA_FILE",
    "MODEL_CLASSES",
    "LoadedModel",
    "load_model",
    "model_class",
    "prepare_run_data",
    "resolve_checkpoint",
    "router_text",
]

CHECKPOINT_NAMES = ("final", "best", "last", "latest", "checkpoint", "model")

#: dynroute's own model types (``config.json``'s ``model_type``) and their classes,
#: imported on first use (``dynroute.adaptive`` sits above this module).
MODEL_CLASSES = {
    "dynmoe": ("dynroute.models", "DynMoEForCausalLM"),
    "dynroute_adaptive": ("dynroute.adaptive", "AdaptiveForCausalLM"),
}


def model_class(model_type: str | None) -> Any:
    """The class of one of dynroute's own model types (``MODEL_CLASSES``).

    Example:
        >>> model_class("dynmoe").__name__
        'DynMoEForCausalLM'
    """
    import importlib

    module, name = MODEL_CLASSES[model_type or "dynmoe"]
    return getattr(importlib.import_module(module), name)


DATA_FILE = "dynroute_data.json"
"""Written by ``dynroute.train`` next to exported weights: the corpus they were trained on."""


def resolve_checkpoint(path: str | Path) -> Path:
    """The folder holding ``config.json`` + weights: ``path`` itself or a checkpoint in it.

    A training run folder is searched for a sub-folder with a ``config.json``
    (preferring ``final``, ``best``, ``last``, ... then the newest).

    Raises:
        FileNotFoundError: with what was looked for.

    Example:
        >>> resolve_checkpoint("/nonexistent")
        Traceback (most recent call last):
        FileNotFoundError: /nonexistent does not exist; pass the --out folder of `dynroute train`...
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(
            f"{root} does not exist; pass the --out folder of `dynroute train`, its model/ "
            "folder, or a transformers MoE checkpoint folder"
        )
    if (root / "config.json").is_file():
        return root
    subs = [p.parent for p in root.glob("*/config.json")] + [
        p.parent for p in root.glob("*/*/config.json")
    ]
    if not subs:
        raise FileNotFoundError(
            f"{root} has no config.json (nor any sub-folder with one); pass the --out folder "
            "of `dynroute train`, its model/ folder, or a folder written by save_pretrained "
            "(config.json + model.safetensors)"
        )
    for name in CHECKPOINT_NAMES:
        for s in subs:
            if s.name == name:
                return s
    return max(subs, key=lambda s: (s / "config.json").stat().st_mtime)


@dataclass
class LoadedModel:
    """A model ready to evaluate or analyse, with its tokenizer and where its text is.

    Attributes:
        model: the causal LM (eval mode); folder: where its weights are.
        tokenizer: ``tokenizers.Tokenizer`` (dynroute) or a transformers tokenizer.
        kind: ``"dynroute-run"``, ``"dynmoe-model"`` or ``"hf-moe"``.
        data: the corpus settings it was trained on (``prepare_data`` keyword
            arguments; ``source="stdlib"`` when unknown).
        prepared: the run's prepared corpus (cached token files) when its tokenizer
            came from it, else None.
        seq_len, batch_size: default evaluation shapes (the run's own when known).
    """

    model: nn.Module
    folder: Path
    tokenizer: Any
    kind: str
    data: dict[str, Any]
    prepared: PreparedData | None
    seq_len: int
    batch_size: int

    def tokens(
        self,
        data: str | Path | None = None,
        split: str = "validation",
        max_tokens: int | None = None,
    ) -> np.ndarray:
        """Held-out ids ``[L]``: the run's cached split, or ``data`` encoded with our tokenizer.

        Another corpus is always encoded with the model's own tokenizer (one trained on
        that corpus would make the loss meaningless for this model).

        Args:
            data: a corpus for ``dynroute.data.load_corpus`` (None: the training corpus).
            split: ``"validation"`` or ``"train"``.
            max_tokens: tokens needed (bounds how much text is read and tokenized).
        """
        if data is None and self.prepared is not None:
            prepared = self.prepared
            return np.asarray(
                prepared.val_tokens if split == "validation" else prepared.train_tokens
            )
        source = self.data["source"] if data is None else data
        source = None if source in ("", "stdlib") else source
        # ~4 bytes per token: 8 bytes per wanted token fills max_tokens without reading more.
        cap = None if max_tokens is None else 8 * (max_tokens + 1)
        column = self.data.get("text_column", "text")
        docs = load_corpus(source, split, text_column=column, max_bytes=cap)  # type: ignore[arg-type]
        return _encode(self.tokenizer, docs)


def _encode(tokenizer: Any, docs: list[str]) -> np.ndarray:
    """Flat ids of ``docs`` with an end-of-text id after each (dynroute or HF tokenizer)."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return encode_documents(tokenizer, docs)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def prepare_run_data(data: dict[str, Any]) -> PreparedData:
    """``prepare_data`` for a run's ``[data]`` table (the cache entry its training used).

    Example:
        >>> prepare_run_data({"source": "stdlib", "vocab_size": 4096})  # doctest: +SKIP
    """
    source = None if data.get("source") in ("", "stdlib", None) else data["source"]
    return prepare_data(source, **{k: v for k, v in data.items() if k != "source"})


def load_model(path: str | Path) -> LoadedModel:
    """Load any checkpoint dynroute evaluates or analyses (see the module docstring).

    Args:
        path: a ``dynroute train`` run folder, its ``model/`` folder, a ``save_pretrained``
            folder of a DynMoE model, a transformers MoE checkpoint (routing saved by
            ``dynroute patch`` is re-applied), or a folder holding one of these.

    Returns:
        LoadedModel.

    Raises:
        FileNotFoundError, ValueError: saying what was found and what to pass instead.

    Example:
        >>> loaded = load_model("runs/tiny")                    # doctest: +SKIP
        >>> loaded.kind, loaded.tokens().shape                  # doctest: +SKIP
        ('dynroute-run', (61440,))
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours is the one on screen

    root = Path(path)
    exported = root / "model" / "config.json"
    if (root / "run.json").is_file() and (exported.is_file() or (root / "checkpoint.pt").is_file()):
        run = json.loads((root / "run.json").read_text())
        kind, data = "dynroute-run", run["data"]
        seq_len, batch_size = int(run["train"]["seq_len"]), int(run["train"]["batch_size"])
        if exported.is_file():
            cls = model_class(json.loads(exported.read_text()).get("model_type"))
            folder, model = root / "model", cls.from_pretrained(root / "model")
        else:  # killed before the first export: use the training checkpoint itself
            # Our own file (written by dynroute.train): RNG states and plain values too.
            state = torch.load(root / "checkpoint.pt", map_location="cpu", weights_only=False)
            cls = model_class(state["model_config"].get("model_type"))
            folder, model = root, cls(cls.config_class(**state["model_config"]))
            model.load_state_dict(state["model"])
        tokenizer = None
    else:
        folder = resolve_checkpoint(root)
        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type") not in MODEL_CLASSES:
            return _load_hf(folder, config)
        model, kind = model_class(config["model_type"]).from_pretrained(folder), "dynmoe-model"
        limit, batch_size = int(model.config.max_seq_len), 16
        # Where its text and tokenizer come from, best first: the data settings `dynroute
        # train` exports with it, a tokenizer.json beside it, else the default corpus at
        # the model's vocabulary size.
        data, seq_len, tokenizer = {"source": "stdlib"}, min(256, limit), None
        tok_files = [d / "tokenizer.json" for d in (folder, folder.parent)]
        if (folder / DATA_FILE).is_file():  # 128-token windows, as `dynroute eval` always used
            data, seq_len = json.loads((folder / DATA_FILE).read_text()), min(128, limit)
        elif any(f.is_file() for f in tok_files):
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(next(f for f in tok_files if f.is_file())))
        else:
            data["vocab_size"] = int(model.config.vocab_size)
    prepared = prepare_run_data(data) if tokenizer is None else None
    tokenizer = prepared.tokenizer if prepared is not None else tokenizer
    return LoadedModel(model.eval(), folder, tokenizer, kind, data, prepared, seq_len, batch_size)


def _load_hf(folder: Path, config: dict[str, Any]) -> LoadedModel:
    """A transformers MoE checkpoint with its saved dynroute routing and its own tokenizer."""
    from dynroute import hf

    if not hf.is_hf_moe_checkpoint(folder):
        raise ValueError(
            f"{folder}/config.json has model_type {config.get('model_type')!r}; dynroute reads "
            "its own models (model_type 'dynmoe': pass the --out folder of `dynroute train` or "
            "its model/ folder) and transformers MoE checkpoints of the families dynroute.hf "
            f"supports ({hf.supported_families_text()})"
        )
    model = hf.load_patched(folder)
    seq_len = min(256, int(getattr(model.config, "max_position_embeddings", 256)))
    tokenizer = hf.load_tokenizer(folder)
    return LoadedModel(
        model.eval(), folder, tokenizer, "hf-moe", {"source": "stdlib"}, None, seq_len, 4
    )


def router_text(model: nn.Module) -> str | None:
    """``top_p(p=0.4)``-style description of a model's routing (None if unknown).

    Example:
        >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
        >>> router_text(DynMoEForCausalLM(DynMoEConfig(vocab_size=16, d_model=16, n_layers=1,
        ...     n_heads=2, d_ff=16, num_experts=4, router="top_p", p=0.3)))
        'top_p(p=0.3)'
    """
    cfg = getattr(model, "config", None)
    router = getattr(cfg, "router", None)
    if router is not None and hasattr(cfg, "router_spec"):
        return cfg.router_spec().describe()
    # dynroute.hf blocks carry a RouterSpec with describe(); layers may differ.
    specs = {m.spec.describe() for m in model.modules() if hasattr(m, "routing_callback")}
    return ", ".join(sorted(specs)) or None
