"""`DynMoEConfig`: every knob of the small MoE language model, router and experts included."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from transformers import PretrainedConfig

from dynroute.common.registry import UnknownNameError, spec_name
from dynroute.layers.experts import LAYOUTS, check_experts_spec
from dynroute.layers.moe import layer_experts
from dynroute.routing import Router, layer_router, make_router, router_class

__all__ = ["DynMoEConfig", "router_config"]


class DynMoEConfig(PretrainedConfig):
    """Configuration of :class:`~dynroute.models.DynMoEForCausalLM`.

    A decoder-only transformer (RMSNorm, RoPE, causal SDPA attention) whose FFNs are
    ``dynroute.layers.MoE`` blocks. Saved as ``config.json`` by ``save_pretrained``.

    Args:
        vocab_size: V, size of the embedding table.
        d_model: model width; n_layers: transformer blocks; n_heads: attention heads.
        d_ff: hidden width of each expert (unless ``experts`` sets its own) and of the
            dense SwiGLU FFN in non-MoE layers.
        num_experts: E, experts per MoE layer.
        moe_every: put an MoE FFN in every ``moe_every``-th layer (1 = every layer,
            as in "Harder Tasks Need More Experts"); other layers get a dense SwiGLU.
        router: the router of every MoE layer: ``{"name": "top_p", "p": 0.4}``, a name
            with parameters (``"top_p:p=0.4"``) or a :class:`~dynroute.routing.Router`;
            stored as ``{"name": ..., **params}`` so that any registered router, built-in
            or added later, survives ``save_pretrained`` / ``from_pretrained``. As for
            ``MoE``, the router's parameters may also be keyword arguments
            (``router="top_p", p=0.4``), and a bare ``"top_k"`` means k = min(2, E).
        experts: the expert kind of every MoE layer, as ``{"name": "mlp", **params}`` or
            ``"mlp:d_ff=64"`` (any kind registered with ``register_experts``; see
            :mod:`dynroute.layers.experts`); ``d_model``, ``d_ff`` and ``num_experts``
            come from this config unless the spec sets ``d_ff`` or ``num_experts``.
            Default ``{"name": "swiglu"}``; stored as a dict in ``config.json``.
        load_balance_weight: α, weight of the load-balance loss (paper: 1e-2).
        dynamic_weight: β, weight of the dynamic (entropy) loss (paper: 1e-4).
        z_loss_weight: weight of the router z-loss (0 = off).
        dispatch: ``"grouped"`` (default), ``"loop"`` or ``"dense"``.
        expert_layout: ``"stacked"`` (default) or ``"per_expert"``: the weight layout of
            a kind that has one (``swiglu``; see
            :class:`~dynroute.layers.experts.SwiGLUExperts`).
        max_seq_len: longest sequence (sets the RoPE table size).
        rope_theta: RoPE base.
        norm_eps: RMSNorm epsilon.
        initializer_range: std of the normal init of linear and embedding weights.
        tie_word_embeddings: share the input embedding and the LM head.

    Example:
        >>> cfg = DynMoEConfig(vocab_size=64, d_model=32, n_layers=2, router="top_p:p=0.3")
        >>> cfg.router
        {'name': 'top_p', 'p': 0.3, 'max_experts': None, 'normalize': False}
        >>> DynMoEConfig(router="top_p", p=0.3).router == cfg.router  # keyword form, as MoE
        True
        >>> cfg.experts, DynMoEConfig(experts="mlp:d_ff=64").experts
        ({'name': 'swiglu'}, {'name': 'mlp', 'd_ff': 64})
    """

    model_type = "dynmoe"

    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 256
    num_experts: int = 8
    moe_every: int = 1
    router: Any = "top_k"
    experts: Any = "swiglu"
    load_balance_weight: float = 1e-2
    dynamic_weight: float = 1e-4
    z_loss_weight: float = 0.0
    dispatch: str = "grouped"
    expert_layout: str = "stacked"
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    # generate() keeps a KV cache (transformers' DynamicCache); see modeling.py.
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        if self.expert_layout not in LAYOUTS:
            raise ValueError(
                f"DynMoEConfig: unknown expert_layout {self.expert_layout!r}; "
                f"choose one of {list(LAYOUTS)}"
            )
        try:
            params = {k: kwargs.pop(k) for k in router_fields(self.router) if k in kwargs}
            self.router = router_config(self.router, params, num_experts=self.num_experts)
            self.experts = check_experts_spec(self.experts)
            with torch.device("meta"):  # every check of a real build; no memory, no draws
                layer_experts(
                    self.experts, self.d_model, self.d_ff, self.num_experts, self.expert_layout
                )
        except (TypeError, ValueError) as err:  # the same class: a plugin's name stays one
            kind = UnknownNameError if isinstance(err, UnknownNameError) else ValueError
            raise kind(f"DynMoEConfig: {err}") from None
        if self.d_model % self.n_heads:
            raise ValueError(
                f"DynMoEConfig: d_model ({self.d_model}) must be divisible by "
                f"n_heads ({self.n_heads})"
            )
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("DynMoEConfig: the head size d_model / n_heads must be even for RoPE")
        if self.moe_every < 1:
            raise ValueError(f"DynMoEConfig: moe_every must be >= 1, got {self.moe_every}")
        super().__post_init__(**kwargs)

    # transformers reads these standard names (generation, device maps, summaries).
    @property
    def hidden_size(self) -> int:
        """Alias of ``d_model`` for transformers utilities."""
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        """Alias of ``n_layers`` for transformers utilities."""
        return self.n_layers

    @property
    def num_attention_heads(self) -> int:
        """Alias of ``n_heads`` for transformers utilities."""
        return self.n_heads

    def is_moe_layer(self, index: int) -> bool:
        """Whether layer ``index`` (0-based) has an MoE FFN: the last of every ``moe_every``.

        Example:
            >>> [DynMoEConfig(n_layers=4, moe_every=2).is_moe_layer(i) for i in range(4)]
            [False, True, False, True]
        """
        return (index + 1) % self.moe_every == 0

    def router_spec(self) -> Router:
        """The configured router, built.

        Example:
            >>> DynMoEConfig(router={"name": "top_k", "k": 1}).router_spec()
            TopK(k=1, normalize=True)
        """
        return make_router(self.router)  # type: ignore[return-value]


def router_fields(router: Any) -> list[str]:
    """The parameter names of a router setting's class (a name, a dict or a Router).

    Example:
        >>> router_fields("top_p:p=0.4")
        ['p', 'max_experts', 'normalize']
    """
    cls = type(router) if isinstance(router, Router) else None
    if cls is None:
        if not isinstance(router, str | Mapping):
            raise TypeError(f"router must be a name, a dict or a Router, got {router!r}")
        cls = router_class(spec_name(router))
    return [f.name for f in dataclasses.fields(cls)]


def router_config(
    router: Any, params: Mapping[str, Any] | None = None, *, num_experts: int = 8
) -> dict[str, Any]:
    """A router setting as ``{"name": ..., **params}`` (every field, as ``config.json`` keeps it).

    ``router``: a name (``"top_p"``, ``"top_p:p=0.4"``), a dict or a Router; ``params``
    add to and override its parameters. A bare ``"top_k"`` means k = min(2, num_experts),
    as in ``MoE``.

    Raises:
        ValueError, TypeError: unknown router, unknown or missing parameters.

    Example:
        >>> router_config("top_p", {"p": 0.3})
        {'name': 'top_p', 'p': 0.3, 'max_experts': None, 'normalize': False}
        >>> router_config("top_k")
        {'name': 'top_k', 'k': 2, 'normalize': True}
        >>> router_config({"name": "top_k", "k": 1}, {"normalize": False})
        {'name': 'top_k', 'k': 1, 'normalize': False}
    """
    if isinstance(router, Router):
        router = router.to_dict()
    if not isinstance(router, str | Mapping):
        raise TypeError(f"router must be a name, a dict or a Router, got {router!r}")
    return layer_router(router, num_experts, **(params or {})).to_dict()  # type: ignore[union-attr]
