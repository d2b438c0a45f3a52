"""Per-block execution options: activation checkpointing and ``torch.compile``.

Both act on the blocks in place, so parameter names, ``state_dict`` keys and checkpoints
are the same with or without them (a run may switch them on or off between resumes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_blocks", "compile_blocks", "model_blocks"]


def model_blocks(model: nn.Module, option: str) -> list[nn.Module]:
    """The transformer blocks of ``model`` (its ``blocks`` ModuleList), for ``option``.

    Raises:
        ValueError: the model has no ``blocks`` list (say which option needs it).

    Example:
        >>> model_blocks(nn.Module(), "compile")
        Traceback (most recent call last):
        ...
        ValueError: compile needs a model with a `blocks` ModuleList; Module has none
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"{option} needs a model with a `blocks` ModuleList; {type(model).__name__} has none"
        )
    return list(blocks)


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # evaluation: nothing to recompute
            return forward(*args, **kwargs)
        # Non-reentrant: works with inputs that need no grad, keyword arguments, nested
        # outputs (the block's MoEAux) and torch.compile.
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    """Recompute each block's activations in the backward pass instead of keeping them.

    Memory per block falls to its input; the forward runs twice. Routing is recomputed
    too, so a router must be deterministic in its input (every built-in one is); a
    router that updates state buffers in its forward would update them twice.

    Returns:
        The blocks it wrapped.

    Example:
        >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
        >>> m = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=2,
        ...                                    n_heads=2, d_ff=16, num_experts=4))
        >>> len(checkpoint_blocks(m)), "blocks.0.attn.qkv.weight" in m.state_dict()
        (2, True)
    """
    blocks = model_blocks(model, "activation_checkpointing")
    for block in blocks:
        if not getattr(block, "_dynroute_checkpointed", False):
            block.forward = _checkpointed(block.forward)  # type: ignore[method-assign]
            block._dynroute_checkpointed = True  # type: ignore[assignment]
    return blocks


def compile_blocks(model: nn.Module, **compile_kwargs: Any) -> list[nn.Module]:
    """``torch.compile`` every block in place (``nn.Module.compile``; names unchanged).

    Compiling blocks rather than the whole model keeps graphs small and identical across
    layers (one compilation serves all of them), and leaves the loss, logging and the
    LM head in eager mode. See docs/training.md for the graph breaks routing needs.

    Example:
        >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
        >>> m = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=2,
        ...                                    n_heads=2, d_ff=16, num_experts=4))
        >>> len(compile_blocks(m)), list(m.state_dict())[1]
        (2, 'blocks.0.attn_norm.weight')
    """
    blocks = model_blocks(model, "compile")
    for block in blocks:
        block.compile(**compile_kwargs)
    return blocks
