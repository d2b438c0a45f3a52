"""Build a library: one adapter per domain, its PHATGOOSE gates, and the joint MoLE.

``dynroute lora library build`` is :func:`build_library`. A library folder holds
``library.json`` (base, adapters by name, held-in and held-out domains, the config),
``adapters/<domain>/`` (a ``dynroute lora train`` run each: ``adapters/<domain>/adapters``
is the adapter, with ``phatgoose_gates.safetensors`` beside it), ``gates/<domain>/`` (the
gate runs) and ``mole/`` (E = #adapters LoRA experts trained jointly on the held-in
domains with the config's router: the upper reference). Every run is the one training
engine; rerunning the command resumes whatever is unfinished.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from dynroute.checkpoints import load_model
from dynroute.common.jsonfile import write_json
from dynroute.lora.config import LoRARunConfig
from dynroute.lora.data import DomainMixture, DomainTokens, tokenize_domains
from dynroute.lora.library.gates import train_phatgoose_gates
from dynroute.lora.train import ADAPTERS_DIR, lora_hooks
from dynroute.train import train

__all__ = ["LIBRARY_JSON", "build_library", "read_library", "read_tokens"]

LIBRARY_JSON = "library.json"


def read_tokens(cfg: LoRARunConfig, base: Path) -> DomainTokens:
    """The library's domains (``[data] domains``, None: all of the source's), tokenized
    with the base's tokenizer, once."""
    loaded = load_model(base)
    data = dataclasses.replace(cfg.data, eval_domains=None)
    vocab = int(getattr(loaded.model.config, "vocab_size", 0))
    return tokenize_domains(data, loaded.tokenizer, cfg.train.seq_len, vocab)


def _subset(tokens: DomainTokens, train_on: list[str], val_on: list[str]) -> DomainTokens:
    train_part = DomainMixture({d: tokens.train.tokens[d] for d in train_on})
    return DomainTokens(train_part, {d: tokens.val[d] for d in val_on}, tokens.vocab_size)


def _run(cfg: LoRARunConfig, base: Path, out: Path, data: DomainTokens, progress: bool,
         label: str) -> int:  # fmt: skip
    hooks = dataclasses.replace(lora_hooks(load_model(base), base), load_data=lambda _c: data)
    return train(cfg, out, progress, label, hooks=hooks).steps


def build_library(
    cfg: LoRARunConfig,
    base: Path | str,
    out: Path | str,
    held_out: list[str] | None = None,
    gate_steps: int | None = None,
    mole: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one adapter per held-in domain, then its PHATGOOSE gates; then the MoLE.

    Args:
        cfg: ``[lora]`` targets, rank, alpha (each adapter has one expert; the MoLE has
            one per held-in domain and ``[lora] router``), ``[data]`` the domains (``domains``:
            a subset; all of them are evaluated), ``[train]`` every run's schedule;
        base: the base model folder; out: the library folder;
        held_out: domains no adapter trains on (evaluated only); None: the last domain;
        gate_steps: steps of each gate run (None: ``[train] steps``);
        mole: also train the jointly trained MoLE reference.

    Returns:
        ``library.json``'s content.

    Raises:
        ValueError: a held-out domain the data does not have, or nothing left to train on.
    """
    base, out = Path(base), Path(out)
    tokens = read_tokens(cfg, base)
    domains = sorted(tokens.val)
    held_out = [domains[-1]] if held_out is None else list(held_out)
    unknown = sorted(set(held_out) - set(domains))
    held_in = [d for d in domains if d not in held_out]
    if unknown or not held_in:
        raise ValueError(f"--held-out {','.join(held_out)}: the data's domains are {domains}; "
                         "hold out some of them and keep at least one to train on")  # fmt: skip
    one = dataclasses.replace(cfg.lora, num_experts=1, router="top_k:k=1", kind="lora")
    gate_train = dataclasses.replace(cfg.train, steps=gate_steps or cfg.train.steps)
    for i, d in enumerate(held_in):
        run_cfg = dataclasses.replace(cfg, lora=one, data=dataclasses.replace(
            cfg.data, domains=[d], eval_domains=[d]))  # fmt: skip
        data = _subset(tokens, [d], [d])
        _run(run_cfg, base, out / "adapters" / d, data, progress, f"adapter {i + 1}/{len(held_in)}")
        train_phatgoose_gates(dataclasses.replace(run_cfg, train=gate_train), base,
                              out / "adapters" / d, out / "gates" / d, progress, data)  # fmt: skip
    if mole:
        mole_cfg = dataclasses.replace(
            cfg, lora=dataclasses.replace(cfg.lora, num_experts=len(held_in), kind="lora"),
            data=dataclasses.replace(cfg.data, domains=held_in, eval_domains=domains),
        )  # fmt: skip
        _run(mole_cfg, base, out / "mole", _subset(tokens, held_in, domains), progress, "MoLE")
    info = {
        "base": str(base.resolve()),
        "adapters": {d: f"adapters/{d}/{ADAPTERS_DIR}" for d in held_in},
        "held_in": held_in,
        "held_out": held_out,
        "mole": f"mole/{ADAPTERS_DIR}" if mole else None,
        "config": cfg.to_dict(),
    }
    write_json(out / LIBRARY_JSON, info)
    return info


def read_library(folder: Path | str) -> dict[str, Any]:
    """``library.json`` of a library folder, with a one-line error otherwise."""
    from dynroute.common.folders import describe_folder

    path = Path(folder) / LIBRARY_JSON
    if not path.is_file():
        what = describe_folder(folder) or f"{folder} has no {LIBRARY_JSON}"
        raise FileNotFoundError(f"{what}; pass a folder written by `dynroute lora library build`")
    return json.loads(path.read_text(encoding="utf-8"))
