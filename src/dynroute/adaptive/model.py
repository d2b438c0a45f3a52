"""The Duo-LLM model: per token and layer, the FFN runs a big module, a small one, or none.

    tokens ─ embed ─┬─ [RMSNorm ─ attention] ─ + ─ [RMSNorm ─ big | small | skip] ─ + ─┐
                    └─────────────────────────── x n_layers ─────────────────────────────┘
    ─ RMSNorm ─ LM head ─ logits

Attention, norms, embeddings and the LM head are those of
:class:`~dynroute.models.DynMoEForCausalLM` (same parameter names). Each FFN is a
:class:`~dynroute.layers.experts.MixedExperts` of a big and a small SwiGLU (expert 0 =
big, 1 = small, different widths, no padding), run through
:func:`dynroute.dispatch.grouped`; a token routed to neither gets 0 from the FFN, i.e.
it *skips* the layer (the residual passes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin

from dynroute.adaptive.config import BIG, SKIP, SMALL, AdaptiveConfig
from dynroute.dispatch import grouped
from dynroute.layers.experts import MixedExperts, SwiGLUExperts
from dynroute.models.modeling import (
    CausalSelfAttention,
    DynMoECausalLMOutput,
    DynMoEPreTrainedModel,
    RMSNorm,
    rope_tables,
)
from dynroute.routing import Routing

__all__ = ["AdaptiveFFN", "AdaptiveForCausalLM", "AdaptiveOutput", "budget_loss"]


def budget_loss(p_big: Tensor, target: float) -> Tensor:
    """Duo-LLM's global budget loss: (mean over layers of P(big) − target)².

    Global, not per layer: layers may trade big modules among themselves as long as
    the overall share meets the budget.

    Args:
        p_big: [L] mean router probability of "big" per layer.

    Example:
        >>> float(budget_loss(torch.tensor([1.0, 0.0, 0.5]), 0.25))
        0.0625
    """
    return (p_big.float().mean() - target) ** 2


class AdaptiveFFN(nn.Module):
    """One layer's FFN: a big and a small SwiGLU, plus a linear router.

    Args:
        d_model: width; big_ff, small_ff: inner widths of the two modules;
        gate_columns: router outputs (2: big/small; 3: also skip).

    Shapes:
        forward(h [N, d], choice [N] long in {0 big, 1 small, 2 skip} or None,
        weight [N, 2] or None) -> [N, d]. With ``weight`` (soft routing) every token runs
        both modules, mixed by its two weights; with ``choice`` each token runs one
        module (weight 1) or none.

    Example:
        >>> ffn = AdaptiveFFN(8, 32, 2)
        >>> h = torch.randn(3, 8)
        >>> y = ffn(h, torch.tensor([0, 1, 2]))
        >>> torch.allclose(y[2], torch.zeros(8)), torch.allclose(y[0], ffn.module(h[:1], 0)[0])
        (True, True)
    """

    def __init__(self, d_model: int, big_ff: int, small_ff: int, gate_columns: int = 2) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, gate_columns, bias=False)
        self.experts = MixedExperts(
            [SwiGLUExperts(d_model, big_ff, 1), SwiGLUExperts(d_model, small_ff, 1)]
        )
        self.num_experts = 2  # read by dynroute.train.evaluate.activated_parameters

    def module(self, h: Tensor, choice: int) -> Tensor:
        """One module on every row: [n, d] -> [n, d] (zeros for skip)."""
        if choice == SKIP:
            return torch.zeros_like(h)
        return self.experts.run_expert(h, choice)

    def forward(
        self, h: Tensor, choice: Tensor | None = None, weight: Tensor | None = None
    ) -> Tensor:
        n = h.shape[0]
        if weight is not None:  # soft: every token to both modules
            mask = torch.ones(n, 2, dtype=torch.bool, device=h.device)
            routing = Routing.from_mask(mask, weight, weight.detach())
        else:
            if choice is None:
                raise ValueError("AdaptiveFFN: give a choice per token or soft weights")
            run = choice != SKIP
            token = run.nonzero().squeeze(1)
            expert = choice[token]
            probs = F.one_hot(choice.clamp(max=SMALL), 2).float()
            routing = Routing.from_assignments(
                token, expert, torch.ones(len(token), device=h.device), probs, 2
            )
        return grouped(h, routing, self.experts).to(h.dtype)


class AdaptiveBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)) with ffn big / small / skip."""

    def __init__(self, config: AdaptiveConfig, index: int = 0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = CausalSelfAttention(config, index)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = AdaptiveFFN(config.d_model, config.d_ff, config.small_ff, config.gate_columns)


@dataclass
class AdaptiveOutput(DynMoECausalLMOutput):
    """:class:`~dynroute.models.modeling.DynMoECausalLMOutput` plus the routing decisions.

    ``experts_per_layer`` [L] is the mean number of FFN modules run per token (1 without
    skip), ``aux_loss`` the weighted budget loss (router training only).

    Attributes:
        choices: [B, T, L] long, the module of every token and layer (0 big, 1 small,
            2 skip; for soft routing, its most weighted module).
        big_per_layer: [L] float, share of tokens routed big per layer.
        p_big: [L] float, mean router probability of big per layer (router only).
        budget_loss: the unweighted budget loss (router only).
    """

    choices: Tensor | None = None
    big_per_layer: Tensor | None = None
    p_big: Tensor | None = None
    budget_loss: Tensor | None = None


class AdaptiveForCausalLM(DynMoEPreTrainedModel, GenerationMixin):
    """Decoder-only LM whose every FFN is big, small or skipped per token (Duo-LLM).

    ``save_pretrained`` / ``from_pretrained`` / ``generate`` work; so do
    :func:`dynroute.checkpoints.load_model` and ``dynroute eval``.

    Args:
        config: an :class:`~dynroute.adaptive.AdaptiveConfig`.

    Shapes:
        input_ids [B, T] -> logits [B, T, V]; labels [B, T] next tokens (-100 ignored);
        routes [B, T, L] long (0 big, 1 small, 2 skip) forces a pattern per token and
        layer instead of ``config.routing``.

    Example:
        >>> cfg = AdaptiveConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=64)
        >>> model = AdaptiveForCausalLM(cfg)
        >>> ids = torch.randint(0, 50, (2, 8))
        >>> out = model(ids, labels=ids)                       # training mode: random routing
        >>> out.logits.shape, out.choices.shape
        (torch.Size([2, 8, 50]), torch.Size([2, 8, 2]))
        >>> small = model(ids, routes=torch.ones(2, 8, 2, dtype=torch.long))
        >>> small.big_per_layer.tolist()
        [0.0, 0.0]
    """

    config_class = AdaptiveConfig
    #: what `dynroute analyze` (MoE routing) points to for this family instead
    report_command = "dynroute adaptive report"
    config: AdaptiveConfig
    base_model_prefix = "dynroute_adaptive"
    _no_split_modules: ClassVar[list[str]] = ["AdaptiveBlock"]

    def __init__(self, config: AdaptiveConfig) -> None:
        super().__init__(config, AdaptiveBlock)
        # The router's softmax temperature; the trainer anneals it (set_temperature).
        self.temperature = config.temperature_start

    def moe_layers(self) -> list[AdaptiveFFN]:
        """The FFNs in layer order (hooks and parameter counts look here)."""
        return [b.ffn for b in self.blocks]  # type: ignore[misc]

    def set_temperature(self, temperature: float) -> None:
        """Set the routers' softmax temperature (training; evaluation routes hard)."""
        self.temperature = float(temperature)

    def _route(self, h: Tensor, layer: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(hard choice [N], soft weights [N, 2] or None, P(big) scalar or None) of one layer."""
        cfg, n = self.config, h.shape[0]
        if cfg.routing in ("big", "small") or (cfg.routing == "random" and not self.training):
            fixed = SMALL if cfg.routing == "small" else BIG
            return torch.full((n,), fixed, dtype=torch.long, device=h.device), None, None
        if cfg.routing == "random":
            u = torch.rand(n, device=h.device)
            choice = torch.full((n,), SMALL, dtype=torch.long, device=h.device)
            choice[u < cfg.p_big] = BIG
            choice[(u >= cfg.p_big) & (u < cfg.p_big + cfg.p_skip)] = SKIP
            return choice, None, None
        logits = self.blocks[layer].ffn.gate(h).float()  # type: ignore[operator]
        choice = logits.argmax(-1)
        if not self.training:
            return choice, None, None
        probs = torch.softmax(logits / self.temperature, dim=-1)
        # Soft: both modules, weighted; the skip column's weight multiplies nothing.
        return choice, probs[:, :2], probs[:, BIG].mean()

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        routes: Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> AdaptiveOutput:
        # attention_mask etc. arrive from generate(); inputs are unpadded and causal.
        b, t = input_ids.shape
        cfg = self.config
        if t > cfg.max_seq_len:
            raise ValueError(
                f"AdaptiveForCausalLM: sequence length {t} exceeds max_seq_len {cfg.max_seq_len}"
            )
        if routes is not None and routes.shape != (b, t, cfg.n_layers):
            raise ValueError(
                f"AdaptiveForCausalLM: routes must be [B, T, L] = {[b, t, cfg.n_layers]}, "
                f"got {list(routes.shape)}"
            )
        cos, sin = rope_tables(cfg.d_model // cfg.n_heads, t, cfg.rope_theta, input_ids.device)
        x = self.embed(input_ids)
        choices, modules, p_bigs = [], [], []
        for i, block in enumerate(self.blocks):
            x = x + block.attn(block.attn_norm(x), cos, sin)
            h = block.ffn_norm(x).reshape(b * t, -1)
            if routes is not None:
                choice, weight, p_big = routes[:, :, i].reshape(-1).to(x.device), None, None
            else:
                choice, weight, p_big = self._route(h, i)
            x = x + block.ffn(h, choice, weight).view(b, t, -1)
            choices.append(choice.view(b, t))
            modules.append(2.0 if weight is not None else float((choice != SKIP).float().mean()))
            if p_big is not None:
                p_bigs.append(p_big)
        logits = self.lm_head(self.norm(x))
        chosen = torch.stack(choices, dim=-1)
        aux_loss = logits.new_zeros((), dtype=torch.float32)
        p_big_t = bl = None
        if p_bigs:
            p_big_t = torch.stack(p_bigs)
            bl = budget_loss(p_big_t, cfg.budget_target)
            aux_loss = aux_loss + cfg.budget_weight * bl
        return AdaptiveOutput.with_losses(
            logits,
            labels,
            aux_loss,
            experts_per_layer=torch.tensor(modules, dtype=torch.float32),
            choices=chosen,
            big_per_layer=(chosen == BIG).float().mean(dim=(0, 1)),
            p_big=None if p_big_t is None else p_big_t.detach(),
            budget_loss=None if bl is None else bl.detach(),
        )

    def prepare_inputs_for_generation(self, input_ids: Tensor, **kwargs: Any) -> dict[str, Any]:
        """No KV cache: every generation step re-reads the whole (short) sequence."""
        return {"input_ids": input_ids[:, -self.config.max_seq_len :]}
