"""Cheap fixes after the router changed: a few steps of training on a small token budget.

:func:`fine_tune` is one short loop for any causal LM (DynMoE or transformers): only the
parameters it is given train, on the LM loss (plus the model's own router losses, when
it returns them), or on the KL divergence to a teacher's next-token distribution
(distillation). ``gate_parameters`` are the router-only fine-tune's parameters.

Example:
    >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
    >>> from dynroute.posthoc.slots import moe_slots
    >>> model = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=2,
    ...     n_heads=2, d_ff=16, num_experts=4, router={"name": "top_k", "k": 2}))
    >>> ids = np.random.default_rng(0).integers(0, 32, 2000)
    >>> out = fine_tune(model, ids, gate_parameters(moe_slots(model)), steps=2, batch_size=2,
    ...                 seq_len=8)
    >>> out.tokens, len(out.losses)
    (32, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dynroute.data import get_batch
from dynroute.evaluation import logits_of, token_losses
from dynroute.hf import adapted_blocks, router_aux_loss
from dynroute.posthoc.slots import Slot

__all__ = ["TuneResult", "fine_tune", "gate_parameters"]


@dataclass
class TuneResult:
    """What :func:`fine_tune` did: ``steps`` of ``batch_size x seq_len`` tokens."""

    steps: int
    tokens: int
    losses: list[float] = field(default_factory=list)


def gate_parameters(slots: Sequence[Slot]) -> list[nn.Parameter]:
    """The parameters of every slot's gate (null columns included): the router-only set."""
    return [p for slot in slots for p in slot.gate.parameters()]


def _loss(model: nn.Module, x: Tensor, y: Tensor, teacher: nn.Module | None) -> Tensor:
    out = model(x, use_cache=False)
    logits = logits_of(out)
    if teacher is not None:
        with torch.no_grad():
            target = torch.log_softmax(logits_of(teacher(x, use_cache=False)).float(), dim=-1)
        student = torch.log_softmax(logits.float(), dim=-1)
        return F.kl_div(student.flatten(0, 1), target.flatten(0, 1), log_target=True,
                        reduction="batchmean")  # fmt: skip
    loss = token_losses(logits, y).mean()
    aux = getattr(out, "aux_loss", None)  # DynMoE's router losses (load balance, ...)
    if isinstance(aux, Tensor):
        return loss + aux
    if adapted_blocks(model):  # a transformers model: dynroute's losses of the same routing
        return loss + router_aux_loss(model)
    return loss


def fine_tune(
    model: nn.Module,
    tokens: np.ndarray,
    params: Sequence[nn.Parameter],
    *,
    steps: int,
    batch_size: int = 4,
    seq_len: int = 128,
    lr: float = 1e-3,
    teacher: nn.Module | None = None,
    seed: int = 0,
) -> TuneResult:
    """Train only ``params`` for ``steps`` AdamW steps on random windows of ``tokens``.

    Every other parameter is frozen for the loop and given back its ``requires_grad``
    after; the model is left in eval mode.

    Args:
        tokens: held-in (training split) ids [L].
        teacher: distil: the loss is KL(teacher || model) of next-token distributions.
    """
    chosen = {id(p) for p in params}
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    optimizer = torch.optim.AdamW(list(params), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    result = TuneResult(steps, steps * batch_size * seq_len)
    model.train()
    try:
        for _ in range(steps):
            x, y = get_batch(tokens, batch_size, seq_len, generator, device)
            loss = _loss(model, x, y, teacher)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params), 1.0)
            optimizer.step()
            result.losses.append(float(loss.detach()))
    finally:
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_(frozen.get(n, True))
    return result
