"""Load, save and recognise adapted transformers checkpoints; their tokenizer and sample text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from dynroute.common.folders import describe_folder, folder_kind
from dynroute.hf.apply import CONFIG_KEY, apply_routing, routing_config
from dynroute.hf.families import supported_families_text, supported_model_types
from dynroute.hf.routers import RouterSpec

__all__ = [
    "CheckpointError",
    "check_checkpoint",
    "is_hf_moe_checkpoint",
    "load_patched",
    "load_tokenizer",
    "read_config",
    "reapply_routing",
    "sample_texts",
    "save_patched",
]


class CheckpointError(ValueError):
    """A model folder is missing, incomplete or of an unsupported family."""


def read_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a model folder.

    Raises:
        CheckpointError: no folder or no config.json there.
    """
    path = Path(path)
    cfg = path / "config.json"
    kind = folder_kind(path)
    if not cfg.is_file() or (kind is not None and not kind.model):  # e.g. a dynroute run
        what = describe_folder(path) or f"{path} is not a transformers model folder"
        raise CheckpointError(
            f"{what}; pass a transformers checkpoint folder (config.json + weights, as "
            "save_pretrained writes it; downloads are not done for you: use "
            "`huggingface-cli download <repo> --local-dir DIR` first)"
        )
    return json.loads(cfg.read_text())


def is_hf_moe_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a local transformers checkpoint of a family dynroute.hf adapts.

    True for a folder whose ``config.json`` has a supported ``model_type`` (patched by
    dynroute or not); False for anything else, including dynroute's own models.

    Example:
        >>> is_hf_moe_checkpoint("/nonexistent")
        False
    """
    try:
        config = read_config(path)
    except (CheckpointError, OSError, ValueError):
        return False
    return config.get("model_type") in supported_model_types()


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint of a family dynroute.hf adapts, or one line
    saying what the folder is instead.

    Raises:
        CheckpointError: not a transformers checkpoint, or not of a supported MoE family.
    """
    path = Path(path)
    config = read_config(path)
    model_type = config.get("model_type")
    if model_type not in supported_model_types():
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not a supported MoE family. "
            f"Supported: {supported_families_text()}."
        )
    return config


def reapply_routing(model: nn.Module, settings: dict[str, Any] | None = None) -> nn.Module:
    """Apply the routing recorded in ``settings`` (default ``model.config.dynroute_routing``).

    A model without recorded settings gets ``"top_k"``: its own routing, measured by dynroute.
    """
    settings = settings if settings is not None else getattr(model.config, CONFIG_KEY, None)
    if not settings:
        return apply_routing(model, "top_k")
    version = settings.get("version", 1)
    if version != 1:
        raise CheckpointError(f"{CONFIG_KEY} version {version} is newer than this dynroute (1)")
    dispatch = settings.get("dispatch", "grouped")
    for key, entry in settings.get("layers", {}).items():
        layer: int | str = int(key) if key.isdigit() else key
        apply_routing(model, RouterSpec.from_dict(entry), layers=[layer], dispatch=dispatch)
    return model


def load_patched(path: str | Path, **from_pretrained_kwargs: Any) -> nn.Module:
    """Load a checkpoint with transformers and re-apply its saved dynroute routing.

    Plain ``AutoModelForCausalLM.from_pretrained`` loads the *original* routing (the
    settings are only a ``dynroute_routing`` entry in config.json); this function reads
    that entry and calls :func:`apply_routing`. A checkpoint without it gets ``"top_k"``
    (identical outputs, plus dynroute's experts-per-token statistics).

    Args:
        path: local folder written by ``save_pretrained`` / ``dynroute patch``.
        **from_pretrained_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``
            (e.g. ``dtype=torch.bfloat16``).

    Example:
        >>> try:
        ...     load_patched("/nonexistent")
        ... except CheckpointError as err:
        ...     print(str(err)[:47])
        /nonexistent is not a transformers model folder
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    check_checkpoint(path)
    model = AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)
    model.eval()
    return reapply_routing(model)


def save_patched(model: nn.Module, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """``save_pretrained`` with the routing settings in config.json (and the tokenizer).

    Raises:
        ValueError: a block uses a callable router (it cannot be written to JSON).
    """
    out = Path(out_dir)
    setattr(model.config, CONFIG_KEY, routing_config(model))
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_tokenizer(model_dir: str | Path) -> Any:
    """The tokenizer shipped in a local model folder (``AutoTokenizer``, no download).

    Raises:
        CheckpointError: the folder has no tokenizer files.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((model_dir / n).is_file() for n in names):
        raise CheckpointError(
            f"{model_dir} has no tokenizer (none of {', '.join(names)}); copy the tokenizer "
            "files of the original checkpoint into it, e.g. "
            "`AutoTokenizer.from_pretrained(ORIG).save_pretrained(DIR)`"
        )
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as err:  # transformers raises many types; say which folder failed
        raise CheckpointError(f"could not load the tokenizer in {model_dir}: {err}") from err


def sample_texts(num_files: int = 4, max_chars: int = 20_000) -> list[str]:
    """A few standard-library source files: default text when the user gives none.

    Deterministic: the same files every run (spread over the sorted stdlib listing).

    Example:
        >>> texts = sample_texts(2, max_chars=100)
        >>> len(texts), all(0 < len(t) <= 100 for t in texts)
        (2, True)
    """
    from dynroute.data import stdlib_files

    files = stdlib_files()
    step = max(1, len(files) // num_files)
    texts: list[str] = []
    for _, path in files[::step]:
        text = path.read_text(encoding="utf-8", errors="ignore").strip()
        if len(text) >= 200:
            texts.append(text[:max_chars])
        if len(texts) == num_files:
            break
    return texts
