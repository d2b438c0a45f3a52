"""The adapted sparse block: the model's own gate and experts, routed by dynroute."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dynroute.dispatch import get_dispatch
from dynroute.hf.families import Family
from dynroute.hf.routers import RouterSpec, route
from dynroute.layers.experts import ExpertWeights
from dynroute.routing import Routing

__all__ = ["DynamicMoEBlock", "expert_weights"]


def expert_weights(experts: nn.Module) -> ExpertWeights:
    """Views of a transformers experts module as dynroute ``ExpertWeights`` (no copy).

    transformers stores ``gate_up_proj`` [E, 2I, H] (gate rows first) and ``down_proj``
    [E, H, I] for ``F.linear``; dynroute multiplies ``x @ W``, so both are transposed.
    """
    unsupported = [
        flag
        for flag, bad in (
            ("has_bias", True),
            ("is_transposed", True),
            ("has_gate", False),
            ("is_concatenated", False),
            ("has_post_expert_norm", True),
        )
        if getattr(experts, flag, not bad) == bad
    ]
    if unsupported or not hasattr(experts, "gate_up_proj"):
        raise NotImplementedError(
            f"{type(experts).__name__}: expert layout not supported by dynroute.hf "
            f"(flags {unsupported or ['no gate_up_proj']}); expected stacked SwiGLU experts "
            "gate_up_proj [E, 2I, H] and down_proj [E, H, I] without biases"
        )
    return ExpertWeights(
        gate_up=experts.gate_up_proj.transpose(1, 2),
        down=experts.down_proj.transpose(1, 2),
        activation=experts.act_fn,
    )


class DynamicMoEBlock(nn.Module):
    """A transformers sparse MoE block whose routing is chosen by dynroute.

    It adopts the original block's submodules under their original names (``gate``,
    ``experts``, ``shared_expert``, ...), so the state dict, ``save_pretrained`` and
    transformers' router-logit recording (a forward hook on the gate class) keep working:
    the gate is still called on every forward; only its top-k output is ignored.

    Attributes:
        family: the model family (its routing rule, shared experts).
        spec: the router in use (``RouterSpec``).
        layer_name: qualified module name, e.g. ``"model.layers.3.mlp"``.
        layer_index: decoder layer index parsed from the name (None if it has none).
        record_routing: when True, ``last_routing`` keeps the latest ``Routing``.
        last_routing: the latest ``Routing`` (only while ``record_routing``), else None.
        routing_callback: optional ``fn(block, routing)`` called on every forward.
        tokens_seen, assignments_seen: running counters for mean experts per token.

    Example:
        >>> import torch
        >>> from transformers import OlmoeConfig, OlmoeForCausalLM
        >>> from dynroute.hf import apply_routing
        >>> cfg = OlmoeConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1,
        ...     num_attention_heads=4, intermediate_size=16, num_experts=4, num_experts_per_tok=2)
        >>> block = apply_routing(OlmoeForCausalLM(cfg), "top_p", p=0.5).model.layers[0].mlp
        >>> block.record_routing = True
        >>> y = block(torch.randn(1, 3, 32))
        >>> block.last_routing.num_tokens, y.shape
        (3, torch.Size([1, 3, 32]))
    """

    def __init__(
        self,
        original: nn.Module,
        family: Family,
        spec: RouterSpec,
        layer_name: str = "",
        layer_index: int | None = None,
        dispatch: str = "grouped",
    ) -> None:
        super().__init__()
        own = list(original.named_parameters(recurse=False)) + list(
            original.named_buffers(recurse=False)
        )
        if own:
            raise NotImplementedError(
                f"{type(original).__name__} holds tensors outside its submodules "
                f"({[n for n, _ in own]}); dynroute.hf cannot adapt it"
            )
        for child_name, child in original.named_children():
            self.add_module(child_name, child)
        # Kept outside the module tree so that the original is not saved twice.
        self._original: tuple[nn.Module] = (original,)
        self.family = family
        self.spec = spec
        self.layer_name = layer_name
        self.layer_index = layer_index
        self.dispatch_name = dispatch
        self._dispatch = get_dispatch(dispatch)
        self.jitter_noise = float(getattr(original, "jitter_noise", 0.0) or 0.0)
        self.record_routing = False
        self.last_routing: Routing | None = None
        self.routing_callback: Callable[[DynamicMoEBlock, Routing], None] | None = None
        self.last_for_loss: tuple[Routing, Tensor] | None = None
        self.tokens_seen = 0
        self.assignments_seen = 0
        self.training = original.training

    @property
    def original(self) -> nn.Module:
        """The transformers block this one replaced (shares all parameters)."""
        return self._original[0]

    @property
    def num_experts(self) -> int:
        """E, routed experts in this block."""
        return int(self.experts.gate_up_proj.shape[0])

    @property
    def native_k(self) -> int:
        """The model's own experts per token."""
        return self.family.native_k(self.gate)

    def set_router(self, spec: RouterSpec, dispatch: str | None = None) -> None:
        """Switch this block to another router (and optionally dispatch path)."""
        self.spec = spec
        if dispatch is not None:
            self._dispatch = get_dispatch(dispatch)
            self.dispatch_name = dispatch

    def mean_experts(self) -> float:
        """Mean routed experts per token since the last ``reset_stats`` (nan if none)."""
        return self.assignments_seen / self.tokens_seen if self.tokens_seen else float("nan")

    def reset_stats(self) -> None:
        """Zero the experts-per-token counters."""
        self.tokens_seen = 0
        self.assignments_seen = 0

    def route(self, x: Tensor) -> Routing:
        """Call the model's gate on x [N, H] (so recording hooks fire) and route its logits."""
        return self._route(x)[0]

    def _route(self, x: Tensor) -> tuple[Routing, Tensor]:
        logits = self.gate(x)[0]
        return route(self.spec, self.family, self.gate, logits), logits

    def forward(self, hidden_states: Tensor) -> Tensor:
        """[B, S, H] (or [N, H]) -> same shape: routed experts (+ shared experts)."""
        shape = hidden_states.shape
        if self.training and self.jitter_noise > 0:
            # Same RNG draw as Mixtral's block, so seeded runs match the unpatched model.
            noise = torch.empty_like(hidden_states).uniform_(
                1.0 - self.jitter_noise, 1.0 + self.jitter_noise
            )
            hidden_states = hidden_states * noise
        x = hidden_states.reshape(-1, shape[-1])
        routing, logits = self._route(x)
        # kept for dynroute.hf.router_aux_loss (a training step's graph, freed next forward)
        self.last_for_loss = (
            (routing, logits) if self.training and torch.is_grad_enabled() else None
        )
        y = self._dispatch(x, routing, expert_weights(self.experts))
        shared = self.family.shared(self, x)
        if shared is not None:
            y = y + shared
        self.tokens_seen += routing.num_tokens
        self.assignments_seen += routing.num_assignments
        if self.record_routing:
            self.last_routing = routing
        if self.routing_callback is not None:
            self.routing_callback(self, routing)
        return y.reshape(shape)

    def extra_repr(self) -> str:
        return (
            f"family={self.family.name}, router={self.spec.describe()}, "
            f"native_k={self.native_k}, dispatch={self.dispatch_name}"
        )
