"""A small decoder-only MoE language model, readable top to bottom (nanoGPT style).

    tokens ─ embed ─┬─ [RMSNorm ─ causal attention (RoPE, SDPA)] ─ + ─ [RMSNorm ─ FFN] ─ + ─┐
                    └──────────────── x n_layers, FFN = dynroute.layers.MoE ──────────────────┘
    ─ RMSNorm ─ LM head ─ logits

The FFN of every ``moe_every``-th layer is a :class:`dynroute.layers.MoE`, so any router
(top-k, top-p, null experts, expert choice) and any registered expert kind (SwiGLU, MLP,
mixed widths, yours) drop in through the config (``router``, ``experts``). Forward hooks
on those MoE modules see their ``(y, aux)`` output, which is how analysis code reads
routing decisions without touching this file.

Generation uses transformers' Cache API (a ``DynamicCache`` of keys and values per
layer): each decoding step runs only the new token through the blocks, so it is routed
alone, exactly as it was routed inside the full sequence (routing is per token; expert
choice, which ranks tokens against each other, is the exception). Left-padded batches
work through ``attention_mask``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import ModelOutput

from dynroute.layers import MoE
from dynroute.layers.experts import Experts
from dynroute.layers.moe import MoEAux
from dynroute.models.config import DynMoEConfig

__all__ = ["DynMoECausalLMOutput", "DynMoEForCausalLM"]


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale: x / rms(x) · w, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.float()).to(x.dtype)


def rope_tables(
    head_dim: int, max_len: int, theta: float, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """cos, sin tables [max_len, head_dim / 2] of rotary position embeddings, computed on
    the CPU and moved to ``device``.

    Example:
        >>> cos, sin = rope_tables(8, 16, 10000.0)
        >>> cos.shape, float(cos[0, 0])
        (torch.Size([16, 4]), 1.0)
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos().to(device), angles.sin().to(device)


def rope_at(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin [B, 1, T, head_dim / 2] at integer ``positions`` [B, T], built on their device.

    The same products as :func:`rope_tables` (so cached decoding matches a full pass
    bit for bit), for any positions: left-padded rows start at 0 after their padding.

    Example:
        >>> cos, sin = rope_at(torch.tensor([[0, 0, 1]]), 8, 10000.0)
        >>> cos.shape, torch.equal(cos[0, 0, 2], rope_tables(8, 2, 10000.0)[0][1])
        (torch.Size([1, 1, 3, 4]), True)
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device)
    inv_freq = 1.0 / theta ** (exponent / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return angles.cos()[:, None], angles.sin()[:, None]


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position of every token [B, T] from a 0/1 mask [B, T]: left padding does not count.

    Example:
        >>> positions_from_mask(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist()
        [[0, 0, 0, 1], [0, 1, 2, 3]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def attention_bias(
    attention_mask: Tensor | None, past: int, t: int, device: torch.device
) -> Tensor | None:
    """Boolean mask [B | 1, 1, t, past + t] (True = attend) for t new queries after ``past``
    cached keys, or None where SDPA's own causal mask is exact (no padding, no past).

    Padded keys are masked; every query still sees itself, so a padding row is never
    empty (an empty row would give NaN, which the routers reject).

    Example:
        >>> attention_bias(None, 2, 2, torch.device("cpu"))[0, 0].int().tolist()
        [[1, 1, 1, 0], [1, 1, 1, 1]]
    """
    if attention_mask is None and (past == 0 or t == 1):
        return None  # is_causal for a prompt; a single new query sees every cached key
    keys = torch.arange(past + t, device=device)
    queries = torch.arange(past, past + t, device=device)[:, None]
    allowed = keys <= queries  # [t, past + t]
    if attention_mask is not None:
        allowed = (allowed & attention_mask[:, None, -(past + t) :].bool()) | (keys == queries)
        return allowed[:, None]
    return allowed[None, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate half-pairs of x [B, H, T, h] by position; cos/sin are [T, h/2] or [B, 1, T, h/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, RoPE on q and k, via ``scaled_dot_product_attention``."""

    def __init__(self, config: DynMoEConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.layer_idx = layer_idx  # this layer's slot in a KV cache
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [..., H, T, h] of x [..., T, d], RoPE applied to q and k."""
        *lead, t, d = x.shape
        qkv = self.qkv(x).view(*lead, t, 3, self.n_heads, d // self.n_heads)
        q, k, v = (z.transpose(-3, -2) for z in qkv.unbind(-3))  # [..., H, T, h]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: Cache | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x [B, T, d] -> [B, T, d]; with ``cache`` the T new keys/values are appended to
        it and the queries attend to everything cached; ``mask`` from :func:`attention_bias`."""
        b, t, d = x.shape
        q, k, v = self.project(x, cos, sin)  # [B, H, T, h]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, H, past + T, h]
        if mask is None:
            # a prompt (no past): causal; a single new token: it sees every cached key
            y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    """Dense SwiGLU FFN for the layers without MoE (``moe_every > 1``)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: DynMoEConfig, index: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = CausalSelfAttention(config, index)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn: MoE | SwiGLU
        if config.is_moe_layer(index):
            self.ffn = MoE(
                config.d_model,
                config.d_ff,
                config.num_experts,
                router=config.router,
                dispatch=config.dispatch,
                load_balance_weight=config.load_balance_weight,
                dynamic_weight=config.dynamic_weight,
                z_loss_weight=config.z_loss_weight,
                expert_layout=config.expert_layout,
                experts=config.experts,
            )
        else:
            self.ffn = SwiGLU(config.d_model, config.d_ff)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: Cache | None = None,
        mask: Tensor | None = None,
        carry: Any = None,
    ) -> tuple[Tensor, MoEAux | None]:
        """``carry``: the previous MoE layer's ``aux.carry`` (a recurrent router's state)."""
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, mask)
        h = self.ffn_norm(x)
        if isinstance(self.ffn, MoE):
            y, aux = self.ffn(h, carry)
            return x + y, aux
        return x + self.ffn(h), None


@dataclass
class DynMoECausalLMOutput(ModelOutput):
    """What :meth:`DynMoEForCausalLM.forward` returns.

    Attributes:
        loss: lm_loss + aux_loss (only with ``labels``).
        logits: [B, T, V].
        lm_loss: mean next-token cross-entropy (only with ``labels``).
        aux_loss: sum over MoE layers of their weighted router losses.
        experts_per_layer: float tensor [L_moe], mean real experts per token per MoE layer.
        aux: one :class:`dynroute.layers.moe.MoEAux` per MoE layer (routing, router
            logits, each loss), in layer order.
        past_key_values, cache: the KV cache after this call (with ``use_cache``; the same
            object under both names, which transformers releases before and after 5.2x read).
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    lm_loss: Tensor | None = None
    aux_loss: Tensor | None = None
    experts_per_layer: Tensor | None = None
    aux: list[MoEAux] | None = None
    past_key_values: Cache | None = None
    cache: Cache | None = None

    @classmethod
    def with_losses(
        cls, logits: Tensor, labels: Tensor | None, aux_loss: Tensor, **fields: Any
    ) -> Self:
        """The output of ``logits`` [B, T, V]; with ``labels`` [B, T] (already aligned by
        the caller; -100 is ignored) ``lm_loss`` is their mean cross-entropy in float32 and
        ``loss`` = lm_loss + aux_loss."""
        lm_loss = loss = None
        if labels is not None:
            flat = logits.float().reshape(-1, logits.shape[-1])
            lm_loss = F.cross_entropy(flat, labels.reshape(-1), ignore_index=-100)
            loss = lm_loss + aux_loss
        return cls(loss=loss, logits=logits, lm_loss=lm_loss, aux_loss=aux_loss, **fields)


class DynMoEPreTrainedModel(PreTrainedModel):
    """The layers, weight init and transformers plumbing shared by DynMoE models.

    Builds, in this order (it fixes the random draws): ``embed``, ``blocks`` (``block(config,
    i)`` for each layer), the final ``norm``, the ``lm_head`` (tied to ``embed``), then
    transformers' weight init.
    """

    config_class = DynMoEConfig
    config: DynMoEConfig
    base_model_prefix = "dynmoe"
    _no_split_modules: ClassVar[list[str]] = ["Block"]
    _supports_sdpa = True
    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "embed.weight"}

    def __init__(
        self, config: DynMoEConfig, block: Callable[[Any, int], nn.Module] = Block
    ) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        # transformers' init functions skip weights already loaded by from_pretrained.
        if isinstance(module, nn.Linear | nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, Experts):
            for weight in module.parameters():
                init.normal_(weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)

    # every model of the family has ``embed`` and ``lm_head``; transformers asks for them
    @property
    def supports_left_padding(self) -> bool:
        """Whether a left-padded row gets the same tokens as the prompt alone: true unless a
        router mixes the tokens of a sequence (Graph of Tokens sees the padding)."""
        return not any(
            getattr(m.route, "mixes_tokens", False) for m in self.modules() if isinstance(m, MoE)
        )

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed  # type: ignore[return-value]

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head  # type: ignore[return-value]

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value


class DynMoEForCausalLM(DynMoEPreTrainedModel, GenerationMixin):
    """Decoder-only MoE language model; ``save_pretrained``/``from_pretrained``/``generate`` work.

    Args:
        config: a :class:`DynMoEConfig`.

    Shapes:
        input_ids [B, T] (T <= max_seq_len) -> logits [B, T, V]; labels [B, T] are the
        *next* tokens (already shifted, as ``dynroute.data.get_batch`` returns them),
        -100 is ignored.

    Example:
        >>> cfg = DynMoEConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=32,
        ...                    num_experts=4, router="top_p", p=0.4)
        >>> model = DynMoEForCausalLM(cfg)
        >>> ids = torch.randint(0, 50, (2, 8))
        >>> out = model(ids, labels=ids)
        >>> out.logits.shape, out.experts_per_layer.shape, bool(out.loss > 0)
        (torch.Size([2, 8, 50]), torch.Size([2]), True)
    """

    def moe_layers(self) -> list[MoE]:
        """The MoE modules in layer order (register forward hooks here to see routing).

        Example:
            >>> m = DynMoEForCausalLM(DynMoEConfig(vocab_size=16, d_model=16, n_layers=4,
            ...                       n_heads=2, d_ff=16, num_experts=4, moe_every=2))
            >>> len(m.moe_layers())
            2
        """
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoE)]

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> DynMoECausalLMOutput:
        """Logits of ``input_ids`` [B, T], continuing a KV cache when one is given.

        Args:
            attention_mask: [B, past + T] 0/1, 0 on (left) padding; None: no padding.
            position_ids: [B, T]; default: from ``attention_mask``, else past .. past + T − 1.
            past_key_values / cache: a transformers ``Cache`` holding ``past`` tokens (the
                name changed across transformers releases; both are accepted).
            use_cache: start a ``DynamicCache`` when none is given, and return it.
        """
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        b, t = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if past + t > self.config.max_seq_len:
            raise ValueError(
                f"DynMoEForCausalLM: sequence length {past + t} exceeds max_seq_len "
                f"{self.config.max_seq_len}; use shorter inputs or a larger max_seq_len"
            )
        device = input_ids.device
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)[:, -t:]
            else:
                position_ids = torch.arange(past, past + t, device=device)[None].expand(b, t)
        # built on the device at the positions asked for (never a host table copied over:
        # that copy would sync, and a loaded meta-device buffer could be left uninitialised)
        cos, sin = rope_at(position_ids, self.config.d_model // self.config.n_heads,
                           self.config.rope_theta)  # fmt: skip
        mask = attention_bias(attention_mask, past, t, device)
        x = self.embed(input_ids)
        auxes: list[MoEAux] = []
        carry = None  # a recurrent router's state, handed from MoE layer to MoE layer (RMoE)
        for block in self.blocks:
            x, aux = block(x, cos, sin, cache, mask, carry)
            if aux is not None:
                auxes.append(aux)
                carry = aux.carry
        logits = self.lm_head(self.norm(x))
        aux_loss = sum((a.loss for a in auxes), start=logits.new_zeros((), dtype=torch.float32))
        return DynMoECausalLMOutput.with_losses(
            logits,
            labels,
            aux_loss,
            experts_per_layer=torch.tensor([a.mean_experts for a in auxes], dtype=torch.float32),
            aux=auxes,
            past_key_values=cache if use_cache else None,
            cache=cache if use_cache else None,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The tokens the cache has not seen yet (all of them without a cache).

        The cache arrives as ``cache`` or ``past_key_values`` (transformers renamed it);
        positions come from ``attention_mask``. A sequence longer than ``max_seq_len``
        is cut to its last ``max_seq_len`` tokens, which then start a fresh cache: with
        or without the cache every step sees the same window, so both give the same tokens.
        """
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        window = self.config.max_seq_len
        past = cache.get_seq_length() if cache is not None and use_cache is not False else 0
        if input_ids.shape[1] > window:
            input_ids = input_ids[:, -window:]
            attention_mask = attention_mask[:, -window:] if attention_mask is not None else None
            if past:  # the window moved: every cached key is stale
                cache, past = DynamicCache(), 0
        inputs: dict[str, Any] = {"input_ids": input_ids[:, past:], "use_cache": use_cache}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if use_cache is not False and cache is not None:
            inputs["cache"] = inputs["past_key_values"] = cache
        return inputs
