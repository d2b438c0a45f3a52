"""What a dispatch path runs: the ``ExpertsLike`` protocol, and the checks around it.

Dispatch only permutes rows and combines outputs; the experts own their math. Anything
with ``num_experts``, ``d_model``, ``__call__(rows [A, d], offsets int32 [E]) -> [A, d]``
and ``run_expert(rows [n, d], e) -> [n, d]`` runs under every dispatch path:
``dynroute.layers.experts.Experts`` modules, and ``dynroute.layers.experts.ExpertWeights``
(SwiGLU over given tensors, e.g. views of a transformers checkpoint). An optional
``fused(x, routing, path) -> [N, d] | None`` hook lets a kind replace permute → experts
→ combine with its own op.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn


class ExpertsLike(Protocol):
    """What ``grouped``, ``loop`` and ``dense`` need of experts (modules or plain tensors)."""

    @property
    def num_experts(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    def __call__(self, rows: Tensor, offsets: Tensor) -> Tensor:
        """rows [A, d] sorted by expert, offsets int32 [E] cumulative counts -> [A, d]."""
        ...

    def run_expert(self, rows: Tensor, e: int) -> Tensor:
        """Expert e alone on rows [n, d] -> [n, d] (the readable reference)."""
        ...


def output_width(experts: ExpertsLike) -> int:
    """Width of the experts' output rows: ``d_out`` where a kind maps d_model to another width
    (LoRA experts over a q/k/v projection), else ``d_model``.

    Example:
        >>> from dynroute.layers.experts import MLPExperts
        >>> output_width(MLPExperts(8, 16, 2))
        8
    """
    return int(getattr(experts, "d_out", experts.d_model))


def expert_tensors(experts: ExpertsLike) -> list[Tensor]:
    """Every weight tensor of ``experts``: a module's parameters, or ``tensors()``."""
    if isinstance(experts, nn.Module):
        return list(experts.parameters())
    return list(getattr(experts, "tensors", tuple)())


def check_dispatch_inputs(x: Tensor, num_experts: int, weights: ExpertsLike, fn: str) -> None:
    """Raise a clear error when x, the routing and the weights do not fit together."""
    if x.dim() != 2:
        raise ValueError(f"{fn}: x must have shape [N, d_model], got {tuple(x.shape)}")
    if x.shape[1] != weights.d_model:
        raise ValueError(f"{fn}: x has d_model={x.shape[1]} but experts expect {weights.d_model}")
    if num_experts != weights.num_experts:
        raise ValueError(
            f"{fn}: routing is over {num_experts} experts but weights hold {weights.num_experts}"
        )


def empty_output(x: Tensor, routing_weight: Tensor, weights: ExpertsLike) -> Tensor:
    """Zeros [N, d_out] for a call with no assignments, still attached to the graph.

    Keeps ``loss.backward()`` working (with zero gradients) on a batch that ran no expert.
    """
    tied = sum((t.sum() for t in expert_tensors(weights)), routing_weight.sum())
    return x.new_zeros(x.shape[0], output_width(weights)) + 0.0 * (x.sum() + tied).to(x.dtype)
