"""FSDP2 (``fully_shard``) for the dense parameters, with checkpoints in the one-process format.

Each transformer block is one FSDP unit (its parameters are gathered for its forward and
backward only), the root holds the embedding, final norm and tied LM head. Full state
dicts go through ``torch.distributed.checkpoint.state_dict``; optimizer states are
converted to ``optimizer.state_dict()``'s integer-keyed format, so a checkpoint written
under FSDP loads into a one-process run and back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

__all__ = [
    "fsdp_model_state",
    "fsdp_optimizer_state",
    "load_fsdp_model_state",
    "load_fsdp_optimizer_state",
    "shard_dense",
]

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_dense(model: nn.Module) -> nn.Module:
    """``fully_shard`` each block of ``model.blocks``, then the root; returns ``model``.

    Call it after moving the model to its device and before building the optimizer.

    Example (under torchrun)::

        model = shard_dense(model.to(device))
        optimizer = torch.optim.AdamW(model.parameters())
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"parallel = 'fsdp' needs a model with a `blocks` ModuleList; "
            f"{type(model).__name__} has none; use parallel = 'ddp'"
        )
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def fsdp_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The full (unsharded) state dict on CPU, on rank 0; empty on other ranks (a collective)."""
    return get_model_state_dict(model, options=_FULL)


def load_fsdp_model_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a full state dict (every rank passes the same one); each rank keeps its shard."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def fsdp_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """``optimizer.state_dict()`` of the unsharded model, on rank 0 (a collective).

    Other ranks get an empty dict.
    """
    by_name = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if "state" not in by_name:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    groups = [
        {**group, "params": [index[name] for name in group["params"]]}
        for group in by_name["param_groups"]
    ]
    return {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": groups,
    }


def load_fsdp_optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, state: dict[str, Any]
) -> None:
    """Load an ``optimizer.state_dict()`` of the unsharded model (every rank passes it)."""
    names = _param_names(model, optimizer)
    by_name = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
    )
