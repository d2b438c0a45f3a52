"""PHATGOOSE's gate training: after an adapter is trained, its contributor trains one
sigmoid gate vector per adapted linear on the same data, the adapter (and base) frozen.

It is the one training engine (``dynroute.train.train``) with the LoRA recipe's data,
evaluation and progress (:func:`dynroute.lora.train.lora_hooks`), a model whose only
parameters that train are the gates, and an export that writes the gates beside the
adapter (``phatgoose_gates.safetensors``), where :func:`load_adapter_library` finds them.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynroute.checkpoints import load_model
from dynroute.common.files import atomic_path
from dynroute.evaluation import logits_of
from dynroute.lora.config import LoRARunConfig
from dynroute.lora.data import DomainTokens
from dynroute.lora.library.folders import GATES_FILE, adapter_folder
from dynroute.lora.library.layer import library_layers
from dynroute.lora.library.load import load_adapter_library
from dynroute.lora.train import LoRAStepOutput, lora_hooks
from dynroute.train import train

__all__ = ["gate_parameters", "train_phatgoose_gates"]


def train_phatgoose_gates(
    cfg: LoRARunConfig,
    base: Path | str,
    adapter: Path | str,
    out: Path | str,
    progress: bool = True,
    data: DomainTokens | None = None,
) -> dict[str, Any]:
    """Train the PHATGOOSE gates of the adapter in ``adapter`` on ``cfg``'s data.

    Args:
        cfg: the run config: ``[data]`` the adapter's own domain(s), ``[train]`` steps, lr,
            batch (``[lora]`` is unused: the adapter is read from its folder);
        base: the base model folder the adapter was trained on; adapter: its folder (ours
            or peft); out: the gate run's folder (rerun to resume);
        data: the tokens, already read (default: ``cfg``'s ``[data]``, read here).

    Returns:
        ``{"steps", "gates": path of the gate file, "domains": final evaluation}``.
    """
    base, out, folder = Path(base), Path(out), adapter_folder(adapter)
    loaded = load_model(base)
    hooks = dataclasses.replace(
        lora_hooks(loaded, base),
        load_data=(lambda _cfg: data) if data is not None else lora_hooks(loaded, base).load_data,
        build_model=functools.partial(_gated, loaded.model, folder),
        compute_loss=gate_loss,
        export=functools.partial(_export, folder),
        run_identity={"base": str(base.resolve()), "adapter": str(folder.resolve())},
    )
    run = train(cfg, out, progress, f"phatgoose gate ({folder.parent.name})", hooks=hooks)
    return {
        "steps": run.steps,
        "gates": str(folder / GATES_FILE),
        "domains": (run.final or {}).get("domains", {}),
    }


def _gated(model: nn.Module, folder: Path, *_args: Any) -> nn.Module:
    load_adapter_library(model, [folder], router="uniform")
    for layer in library_layers(model).values():
        layer.start_gate_training(0)
    return model


def gate_parameters(model: nn.Module) -> dict[str, Tensor]:
    """``{module name: gate [d_in]}`` of the gates in training (the only trainable tensors)."""
    return {
        name: layer.training_gate
        for name, layer in library_layers(model).items()
        if layer.training_gate is not None
    }


def gate_loss(model: nn.Module, x: Tensor, y: Tensor) -> LoRAStepOutput:
    """Next-token cross-entropy of the gated adapter (one adapter per token)."""
    logits = logits_of(model(x))
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    one = torch.ones(len(library_layers(model)))
    return LoRAStepOutput(loss, loss, torch.zeros((), device=loss.device), one)


def _export(folder: Path, model: nn.Module, _out: Path) -> None:
    from safetensors.torch import save_file

    gates = {k: v.detach().float().contiguous().cpu() for k, v in gate_parameters(model).items()}
    with atomic_path(folder / GATES_FILE) as tmp:
        save_file(gates, str(tmp), metadata={"format": "pt"})
