"""The adapted sparse block: the model's own gate and experts, routed by dynroute."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dynroute.dispatch import get_dispatch
from dynroute.hf.families import Family
from dynroute.hf.routers import RouterSpec, route
from dynroute.layers.experts import ExpertWeights
from dynroute.routing import RouterFn, Routing

__all__ = [
    "DYNROUTE_EXPERTS",
    "DynamicMoEBlock",
    "RoutingCounters",
    "expert_weights",
    "register_experts_implementation",
    "topk_layout",
]

#: The ``experts_implementation`` name ``apply_routing`` gives a patched model: dynroute's
#: dispatch computes the experts. Any other name (``"eager"``, ``"batched_mm"``,
#: ``"grouped_mm"``, set with ``model.set_experts_implementation``) computes the routing of
#: dynroute's router through transformers' own experts module and that implementation.
DYNROUTE_EXPERTS = "dynroute"


def _original_experts_forward(experts: nn.Module, *args: object, **kwargs: object) -> Tensor:
    # transformers' decorator wraps the family's own (eager) forward with functools.wraps
    forward = type(experts).forward
    return getattr(forward, "__wrapped__", forward)(experts, *args, **kwargs)


def register_experts_implementation() -> bool:
    """Register ``"dynroute"`` in transformers' ``ALL_EXPERTS_FUNCTIONS`` (idempotent).

    An experts module outside an adapted block that meets the name runs transformers'
    eager forward. Returns False when this transformers has no experts interface.

    Example:
        >>> register_experts_implementation()
        True
    """
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:
        return False
    if DYNROUTE_EXPERTS not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(DYNROUTE_EXPERTS, _original_experts_forward)
    return True


def topk_layout(routing: Routing, width: int | None = None) -> tuple[Tensor, Tensor]:
    """transformers' experts inputs from a routing: ``top_k_index`` [N, K], ``top_k_weights``.

    Token t's experts fill row t in ascending expert order; a token with fewer than K
    experts is padded with expert 0 at weight 0 (adds exactly nothing). K is ``width``,
    else the most experts any token has (one host sync).

    Example:
        >>> import torch
        >>> from dynroute.routing import top_p
        >>> idx, w = topk_layout(top_p(torch.tensor([[9.0, 0.0, 0.0], [1.0, 1.0, 0.0]]), 0.6))
        >>> idx.tolist(), (w > 0).tolist()
        ([[0, 0], [0, 1]], [[True, False], [True, True]])
    """
    counts = routing.experts_per_token()
    n = routing.num_tokens
    if width is None:
        width = int(counts.max()) if n else 0
    order = torch.argsort(routing.token, stable=True)  # by token; experts stay ascending
    token = routing.token.index_select(0, order)
    first = counts.cumsum(0) - counts  # each token's first position in ``order``
    slot = torch.arange(token.numel(), device=token.device) - first.index_select(0, token)
    index = routing.expert.new_zeros(n, width)
    weights = routing.weight.new_zeros(n, width)
    index = index.index_put((token, slot), routing.expert.index_select(0, order))
    weights = weights.index_put((token, slot), routing.weight.index_select(0, order))
    return index, weights


class RoutingCounters:
    """Tokens and (token, expert) pairs an adapted block routed: int64 scalars on its device.

    Example:
        >>> c = RoutingCounters(torch.device("cpu"))
        >>> int(c.tokens.add_(3)), int(c.assignments)
        (3, 0)
    """

    def __init__(self, device: torch.device) -> None:
        self.tokens = torch.zeros((), dtype=torch.int64, device=device)
        self.assignments = torch.zeros((), dtype=torch.int64, device=device)

    def follow(self, device: torch.device) -> None:
        """Move to ``device`` (from the meta device: start at zero there)."""
        if self.tokens.device == device:
            return
        if self.tokens.device.type == "meta":  # no values to copy
            self.tokens = torch.zeros((), dtype=torch.int64, device=device)
            self.assignments = torch.zeros((), dtype=torch.int64, device=device)
        else:
            self.tokens, self.assignments = self.tokens.to(device), self.assignments.to(device)


class _TrainingRouting:
    """The last training forward's (routing, logits), for ``router_aux_loss``.

    They are non-leaf tensors of that step's graph; a copy of the module starts empty, so
    ``copy.deepcopy(model)`` works at any time (EMA and teacher copies).
    """

    def __init__(self) -> None:
        self.value: tuple[Routing, Tensor] | None = None

    def __deepcopy__(self, memo: dict) -> _TrainingRouting:
        return _TrainingRouting()

    def __getstate__(self) -> dict:
        return {"value": None}


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
        tokens_seen, assignments_seen: running counters for mean experts per token (read
            from ``counters``, tensors updated in place, so compiled forwards count too).
        router: the bound router (``spec.bind(native_k)``), set by ``set_router``.
        last_for_loss: (routing, logits) of the last training-mode forward, or None.

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
        self.layer_name = layer_name
        self.layer_index = layer_index
        self.set_router(spec, dispatch)
        self.jitter_noise = float(getattr(original, "jitter_noise", 0.0) or 0.0)
        self.record_routing = False
        self.last_routing: Routing | None = None
        self.routing_callback: Callable[[DynamicMoEBlock, Routing], None] | None = None
        self._for_loss = _TrainingRouting()
        #: the model's experts_implementation before apply_routing named "dynroute"
        self.replaced_experts_implementation: str | None = None
        #: set by ``dynroute.offload``: experts loaded on demand, run instead of ``experts``
        self.offloaded_experts: nn.Module | None = None
        # counters as tensors updated in place: a Python int would be a guard that makes
        # torch.compile recompile on every step. Not buffers (transformers' weight init
        # and meta-device loading handle buffers of their own modules only).
        self.counters = RoutingCounters(self.gate.weight.device)
        self.training = original.training

    def _apply(self, fn: Callable, recurse: bool = True) -> DynamicMoEBlock:
        # .to(device) / .cuda() / to_empty: the counters follow the gate's device
        super()._apply(fn, recurse)
        self.counters.follow(self.gate.weight.device)
        return self

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
        """Switch this block to another router (and optionally dispatch path).

        The router is bound here, once (``spec.bind(native_k)``), not on every forward.
        """
        self.spec = spec
        # in a tuple: a callable that is an nn.Module must not join the module tree
        self._router: tuple[RouterFn] = (spec.bind(self.native_k),)
        if dispatch is not None:
            self._dispatch = get_dispatch(dispatch)
            self.dispatch_name = dispatch

    @property
    def router(self) -> RouterFn:
        """The bound router: ``spec.bind(native_k)``, or the user's callable."""
        return self._router[0]

    @property
    def tokens_seen(self) -> int:
        """Tokens routed since the last ``reset_stats`` (reads a buffer: one host sync)."""
        return int(self.counters.tokens)

    @property
    def assignments_seen(self) -> int:
        """(token, expert) pairs routed since the last ``reset_stats``."""
        return int(self.counters.assignments)

    @property
    def last_for_loss(self) -> tuple[Routing, Tensor] | None:
        """(routing, logits) of the last training-mode forward with grad, else None."""
        return self._for_loss.value

    def mean_experts(self) -> float:
        """Mean routed experts per token since the last ``reset_stats`` (nan if none)."""
        tokens = self.tokens_seen
        return self.assignments_seen / tokens if tokens else float("nan")

    def reset_stats(self) -> None:
        """Zero the experts-per-token counters."""
        self.counters.tokens.zero_()
        self.counters.assignments.zero_()

    @property
    def experts_implementation(self) -> str:
        """``"dynroute"`` (our dispatch) or the transformers implementation in use."""
        config = getattr(self.experts, "config", None)
        return getattr(config, "_experts_implementation", None) or DYNROUTE_EXPERTS

    def route(self, x: Tensor) -> Routing:
        """Call the model's gate on x [N, H] (so recording hooks fire) and route its logits."""
        return self._route(x)[0]

    def _route(self, x: Tensor) -> tuple[Routing, Tensor]:
        logits = self.gate(x)[0]
        return route(self.spec, self.family, self.gate, logits, self.router), logits

    def _experts(self, x: Tensor, routing: Routing) -> Tensor:
        """The routed experts' output [N, H]: our dispatch, or transformers' implementation."""
        if self.offloaded_experts is not None:
            return self._dispatch(x, routing, self.offloaded_experts)
        if self.experts_implementation == DYNROUTE_EXPERTS:
            return self._dispatch(x, routing, expert_weights(self.experts))
        # static width under compile (no host sync): pad every token to all E experts
        width = self.num_experts if torch.compiler.is_compiling() else None
        index, weights = topk_layout(routing, width)
        return self.experts(x, index, weights)

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
        # kept for dynroute.hf.router_aux_loss (a training step's graph, freed next forward;
        # a deepcopy of the block starts without it)
        if self.training and torch.is_grad_enabled():
            self._for_loss.value = (routing, logits)
        elif self._for_loss.value is not None:
            self._for_loss.value = None
        y = self._experts(x, routing)
        shared = self.family.shared(self, x)
        if shared is not None:
            y = y + shared
        with torch.no_grad():
            self.counters.tokens.add_(routing.num_tokens)
            self.counters.assignments.add_(routing.num_assignments)
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
