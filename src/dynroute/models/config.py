"""`DynMoEConfig`: every knob of the small MoE language model, router included."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from transformers import PretrainedConfig

from dynroute.layers.experts import LAYOUTS
from dynroute.routing import Router, make_router, parse_router, router_class

__all__ = ["DynMoEConfig"]


class DynMoEConfig(PretrainedConfig):
    """Configuration of :class:`~dynroute.models.DynMoEForCausalLM`.

    A decoder-only transformer (RMSNorm, RoPE, causal SDPA attention) whose FFNs are
    ``dynroute.layers.MoE`` blocks. Saved as ``config.json`` by ``save_pretrained``.

    Args:
        vocab_size: V, size of the embedding table.
        d_model: model width; n_layers: transformer blocks; n_heads: attention heads.
        d_ff: hidden width of each SwiGLU expert (and of the dense FFN in non-MoE layers).
        num_experts: E, experts per MoE layer.
        moe_every: put an MoE FFN in every ``moe_every``-th layer (1 = every layer,
            as in "Harder Tasks Need More Experts"); other layers get a dense SwiGLU.
        router: the router of every MoE layer: ``{"name": "top_p", "p": 0.4}``, a name
            with parameters (``"top_p:p=0.4"``) or a :class:`~dynroute.routing.Router`;
            stored as ``{"name": ..., **params}`` so that any registered router, built-in
            or added later, survives ``save_pretrained`` / ``from_pretrained``. The flat
            keys of earlier versions (``router="top_p", p=0.4``; also ``k``,
            ``max_experts``, ``normalize``, ``num_null``, ``capacity_factor``) are still
            read: those that are fields of the named router go into it, with the old
            defaults k=2, p=0.4, num_null=4, capacity_factor=2.0.
        load_balance_weight: α, weight of the load-balance loss (paper: 1e-2).
        dynamic_weight: β, weight of the dynamic (entropy) loss (paper: 1e-4).
        z_loss_weight: weight of the router z-loss (0 = off).
        dispatch: ``"grouped"`` (default), ``"loop"`` or ``"dense"``.
        expert_layout: ``"stacked"`` (default) or ``"per_expert"`` (see
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
        >>> DynMoEConfig(router="top_p", p=0.3).router == cfg.router  # the older flat form
        True
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
        try:
            self.router = router_config(self.router, kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"DynMoEConfig: {err}") from None
        if self.expert_layout not in LAYOUTS:
            raise ValueError(
                f"DynMoEConfig: unknown expert_layout {self.expert_layout!r}; "
                f"choose one of {list(LAYOUTS)}"
            )
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


#: Flat router keys of earlier configs, and the defaults they had there.
LEGACY_ROUTER_KEYS = {
    "k": 2,
    "p": 0.4,
    "max_experts": None,
    "normalize": None,
    "num_null": 4,
    "capacity_factor": 2.0,
}


def router_config(router: Any, flat: dict[str, Any]) -> dict[str, Any]:
    """Normalise a router setting to ``{"name": ..., **params}``, folding in flat legacy keys.

    ``flat`` holds the config's other keyword arguments; the legacy router keys are
    removed from it. A flat key that is a field of the router sets that field; a bare
    router name also gets the old defaults of its fields.

    Example:
        >>> router_config("top_p", {"p": 0.3, "k": 2})
        {'name': 'top_p', 'p': 0.3, 'max_experts': None, 'normalize': False}
        >>> router_config({"name": "top_k", "k": 1}, {})
        {'name': 'top_k', 'k': 1, 'normalize': True}
    """
    given = {k: flat.pop(k) for k in list(flat) if k in LEGACY_ROUTER_KEYS}
    if isinstance(router, Router):
        router = router.to_dict()
    if isinstance(router, str):
        spec = parse_router(router)
        if ":" not in router:  # the flat form: the old defaults apply
            given = {**LEGACY_ROUTER_KEYS, **given}
    elif isinstance(router, Mapping):
        spec = dict(router)
    else:
        raise TypeError(f"router must be a name, a dict or a Router, got {router!r}")
    fields = {f.name for f in dataclasses.fields(router_class(spec.get("name", "")))}
    spec.update({k: v for k, v in given.items() if k in fields and v is not None})
    return make_router(spec).to_dict()  # type: ignore[union-attr]
