"""`DynMoEConfig`: every knob of the small MoE language model, router included."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from dynroute.layers.experts import LAYOUTS
from dynroute.routing import ROUTERS

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
        router: ``"top_k"``, ``"top_p"``, ``"null_experts"`` or ``"expert_choice"``.
        k: experts per token for ``top_k`` / ``null_experts``.
        p: threshold of ``top_p`` (the paper's 0.4).
        max_experts: optional cap on experts per token for ``top_p``.
        normalize: renormalize each token's kept weights to sum to 1 (``top_k`` /
            ``top_p``); None keeps the router's default (top-k: yes; top-p: no, the
            paper's raw probabilities).
        num_null: null experts for ``null_experts``.
        capacity_factor: capacity of ``expert_choice``.
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
        >>> cfg = DynMoEConfig(vocab_size=64, d_model=32, n_layers=2, router="top_p", p=0.3)
        >>> cfg.router_kwargs()
        {'p': 0.3}
    """

    model_type = "dynmoe"

    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 256
    num_experts: int = 8
    moe_every: int = 1
    router: str = "top_k"
    k: int = 2
    p: float = 0.4
    max_experts: int | None = None
    normalize: bool | None = None
    num_null: int = 4
    capacity_factor: float = 2.0
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
    # generate() recomputes the whole prefix each step (no KV cache); see modeling.py.
    use_cache: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if self.router not in ROUTERS:
            raise ValueError(
                f"DynMoEConfig: unknown router {self.router!r}; choose one of {list(ROUTERS)}"
            )
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

    def router_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the configured router (only those it accepts).

        Example:
            >>> DynMoEConfig(router="null_experts", k=2, num_null=3).router_kwargs()
            {'k': 2, 'num_null': 3}
            >>> DynMoEConfig(router="top_p", p=0.4, normalize=True).router_kwargs()
            {'p': 0.4, 'normalize': True}
        """
        out: dict[str, Any] = {}
        if self.router in ("top_k", "top_p") and self.normalize is not None:
            out["normalize"] = self.normalize
        if self.router == "top_k":
            return {"k": self.k, **out}
        if self.router == "top_p":
            out = {"p": self.p, **out}
            if self.max_experts is not None:
                out["max_experts"] = self.max_experts
            return out
        if self.router == "null_experts":
            return {"k": self.k, "num_null": self.num_null}
        return {"capacity_factor": self.capacity_factor}
