"""Load a checkpoint together with the held-out text (and tokenizer) to analyse it on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

__all__ = ["CHECKPOINT_NAMES", "Loaded", "load_checkpoint", "resolve_checkpoint"]

CHECKPOINT_NAMES = ("final", "best", "last", "latest", "checkpoint", "model")


def resolve_checkpoint(path: str | Path) -> Path:
    """The folder holding ``config.json`` + weights: ``path`` itself or a checkpoint in it.

    A training run folder is searched for a sub-folder with a ``config.json``
    (preferring ``final``, ``best``, ``last``, ... then the newest).

    Raises:
        FileNotFoundError: with what was looked for.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"analyze: checkpoint {root} does not exist")
    if (root / "config.json").is_file():
        return root
    subs = [p.parent for p in root.glob("*/config.json")] + [
        p.parent for p in root.glob("*/*/config.json")
    ]
    if not subs:
        raise FileNotFoundError(
            f"analyze: {root} has no config.json (nor any sub-folder with one); pass a "
            "folder written by save_pretrained (config.json + model.safetensors) or a "
            "`dynroute train` run folder"
        )
    for name in CHECKPOINT_NAMES:
        for s in subs:
            if s.name == name:
                return s
    return max(subs, key=lambda s: (s / "config.json").stat().st_mtime)


@dataclass
class Loaded:
    """A model ready to analyse, with its held-out tokens and tokenizer.

    Attributes:
        model: eval-mode causal LM; folder: the checkpoint folder it came from.
        tokens: held-out ids [L]; tokenizer: has ``decode(list[int]) -> str``.
        seq_len: default window length; info: run details for ``stats["meta"]``.
    """

    model: nn.Module
    folder: Path
    tokens: np.ndarray
    tokenizer: Any
    seq_len: int
    info: dict[str, Any]


def _train_loader(path: Path) -> Any | None:
    """``dynroute.train``'s checkpoint loader for a run folder or a model it exported.

    Only those carry the run's data settings (``run.json`` / ``dynroute_data.json``);
    for any other folder our own loading knows as much and also reads a
    ``tokenizer.json`` beside the weights.
    """
    if not ((path / "run.json").is_file() or (path / "dynroute_data.json").is_file()):
        return None
    try:
        from dynroute.train import evaluate as train_eval
    except ImportError:
        return None
    loaders = getattr(train_eval, "CHECKPOINT_LOADERS", [])
    if any(detect(path) for _kind, detect, _load in loaders):
        return train_eval
    return None


def _encode(tokenizer: Any, docs: list[str]) -> np.ndarray:
    """Flat ids of ``docs`` with an end-of-text id after each (dynroute or HF tokenizer)."""
    from tokenizers import Tokenizer

    from dynroute import data as dd

    if isinstance(tokenizer, Tokenizer):
        return dd.encode_documents(tokenizer, docs)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def _text_tokens(
    tokenizer: Any, data: str | Path | None, split: str, max_tokens: int | None
) -> np.ndarray:
    from dynroute import data as dd

    # ~4 bytes per token: 8 bytes per wanted token fills max_tokens without reading more.
    cap = None if max_tokens is None else 8 * (max_tokens + 1)
    return _encode(tokenizer, dd.load_corpus(data, split, max_bytes=cap))  # type: ignore[arg-type]


def load_checkpoint(
    path: str | Path,
    data: str | Path | None = None,
    split: str = "validation",
    max_tokens: int | None = None,
) -> Loaded:
    """Load a checkpoint with the held-out text it should be analysed on.

    Recognised, in order: a ``dynroute train`` run folder or its ``model/`` folder
    (through ``dynroute.train``: the run's own data settings and tokenizer), a
    transformers MoE checkpoint (``dynroute.hf.load_patched``, its own tokenizer), and
    any folder with ``config.json`` + weights of ``DynMoEForCausalLM`` (tokenizer from a
    ``tokenizer.json`` beside it, else ``dynroute.data``'s for ``data`` at the model's
    vocabulary size).

    Args:
        path: checkpoint or run folder.
        data: held-out corpus (default: the run's corpus, else the stdlib corpus).
        split: ``"validation"`` (default) or ``"train"``.
        max_tokens: tokens needed (bounds how much text is tokenized).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours is the one on screen
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"analyze: checkpoint {root} does not exist")
    train_eval = _train_loader(root)
    if train_eval is not None:
        loaded = train_eval.load_any_checkpoint(root)
        # The run's own corpus settings give its tokenizer (cached by dynroute.data);
        # other text is encoded with that tokenizer, never with one trained on it.
        prepared = train_eval.load_data(loaded.data)
        if data is None:
            tokens = prepared.val_tokens if split == "validation" else prepared.train_tokens
            source = str(loaded.data.source)
        else:
            tokens = _text_tokens(prepared.tokenizer, data, split, max_tokens)
            source = str(data)
        folder = root / "model" if (root / "model" / "config.json").is_file() else root
        info = {"data": source, "kind": loaded.kind}
        return Loaded(
            loaded.model.eval(),
            folder,
            np.asarray(tokens),
            prepared.tokenizer,
            loaded.seq_len,
            info,
        )

    folder = resolve_checkpoint(root)
    config = json.loads((folder / "config.json").read_text())
    data_name = str(data) if data is not None else "stdlib"
    try:
        from dynroute import hf
    except ImportError:
        hf = None  # type: ignore[assignment]
    if hf is not None and hf.is_hf_moe_checkpoint(folder):
        model = hf.load_patched(folder)
        tok = hf.load_tokenizer(folder)
        tokens = _text_tokens(tok, data, split, max_tokens)
        limit = getattr(model.config, "max_position_embeddings", 256)
        return Loaded(model.eval(), folder, tokens, tok, min(256, int(limit)), {"data": data_name})
    if config.get("model_type") != "dynmoe":
        raise ValueError(
            f"analyze: {folder}/config.json has model_type {config.get('model_type')!r}; "
            "dynroute analyze reads dynroute models (model_type 'dynmoe') and transformers "
            "MoE checkpoints dynroute.hf supports"
        )
    from dynroute.models import DynMoEForCausalLM

    model = DynMoEForCausalLM.from_pretrained(folder)
    vocab = int(model.config.vocab_size)
    tok_file = _find_tokenizer(folder)
    if tok_file is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_file))
        tokens = _text_tokens(tok, data, split, max_tokens)
    else:
        if split != "validation":
            raise ValueError("analyze: --split train needs a tokenizer.json beside config.json")
        from dynroute.data import prepare_data

        prepared = prepare_data(data, vocab_size=vocab)
        tok, tokens = prepared.tokenizer, np.asarray(prepared.val_tokens)
    seq_len = min(256, int(getattr(model.config, "max_seq_len", 256)))
    return Loaded(model.eval(), folder, tokens, tok, seq_len, {"data": data_name})


def _find_tokenizer(folder: Path) -> Path | None:
    for where in (folder, folder.parent):
        if (where / "tokenizer.json").is_file():
            return where / "tokenizer.json"
    return None
