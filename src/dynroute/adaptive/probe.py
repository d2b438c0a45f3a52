"""Probing routing patterns one token at a time, with the context of the default route.

The question the oracle asks (Duo-LLM stage 2) is: *for this token, which pattern of
big / small / skip modules over the L layers gives the lowest loss?* Here a pattern is
applied **to that token only**: every other position (the context the token attends
to) runs the default route. Because attention is causal, the loss at position t then
depends on the default route's keys/values at positions < t (computed once, in
:func:`default_context`) and on the token's own state, so all T positions of a window
are probed at once, for many patterns at once:

    state [F, B, T, d] ──attn over (default K/V at s < t) + (own k/v at s = t)──▶
        ──ffn: big | small | skip──▶ [F·C, B, T, d]     (F patterns → F·C after a layer)

Shapes: F patterns (a frontier), B windows, T positions, d width; C = 2 (big, small) or
3 (with skip); patterns are numbered in base C with layer 0 the most significant digit,
as ``itertools.product`` lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dynroute.adaptive.config import BIG
from dynroute.adaptive.model import AdaptiveBlock, AdaptiveForCausalLM
from dynroute.models.modeling import rope_tables

__all__ = ["Context", "attend", "default_context", "expand", "final_losses"]


@dataclass
class Context:
    """The default route's forward over windows ``ids [B, T]``.

    Attributes:
        embeds: [B, T, d] token embeddings (every probe starts here).
        keys, values: per layer [B, H, T, h] (RoPE applied to keys) of the default route.
        routes: [B, T, L] the default route's modules.
        cos, sin: RoPE tables [T, h/2].
        targets: [B, T] next tokens.
    """

    embeds: Tensor
    keys: list[Tensor]
    values: list[Tensor]
    routes: Tensor
    cos: Tensor
    sin: Tensor
    targets: Tensor


@torch.no_grad()
def default_context(
    model: AdaptiveForCausalLM, ids: Tensor, targets: Tensor, routes: Tensor | None = None
) -> Context:
    """Run windows ``ids [B, T]`` through ``routes [B, T, L]`` (None: the model's own
    evaluation routing) and keep every layer's keys and values.

    Example:
        >>> from dynroute.adaptive import AdaptiveConfig
        >>> m = AdaptiveForCausalLM(AdaptiveConfig(vocab_size=16, d_model=16, n_layers=2,
        ...                                       n_heads=2, d_ff=32)).eval()
        >>> ctx = default_context(m, torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 5).long())
        >>> len(ctx.keys), ctx.keys[0].shape, ctx.routes.shape
        (2, torch.Size([1, 2, 5, 8]), torch.Size([1, 5, 2]))
    """
    cfg = model.config
    b, t = ids.shape
    cos, sin = rope_tables(cfg.d_model // cfg.n_heads, t, cfg.rope_theta, ids.device)
    embeds = model.embed(ids)
    x, keys, values, chosen = embeds, [], [], []
    for i, block in enumerate(model.blocks):
        _, k, v = block.attn.project(block.attn_norm(x), cos, sin)
        keys.append(k)
        values.append(v)
        x = x + block.attn(block.attn_norm(x), cos, sin)
        h = block.ffn_norm(x).reshape(b * t, -1)
        choice = model._route(h, i)[0] if routes is None else routes[:, :, i].reshape(-1)
        x = x + block.ffn(h, choice).view(b, t, -1)
        chosen.append(choice.view(b, t))
    return Context(embeds, keys, values, torch.stack(chosen, -1), cos, sin, targets)


def attend(block: AdaptiveBlock, states: Tensor, ctx: Context, layer: int) -> Tensor:
    """The attention half of a block for probe states [F, B, T, d] -> [F, B, T, d].

    Position t attends to the default route's keys/values at s < t and to its own
    key/value (from its own, pattern-dependent state) at s = t.
    """
    q, k, v = block.attn.project(block.attn_norm(states), ctx.cos, ctx.sin)  # [F, B, H, T, h]
    kd, vd = ctx.keys[layer], ctx.values[layer]  # [B, H, T, h]
    scale = 1.0 / math.sqrt(q.shape[-1])
    t = q.shape[-2]
    scores = torch.einsum("fbhtd,bhsd->fbhts", q, kd) * scale
    past = torch.ones(t, t, dtype=torch.bool, device=q.device).tril(-1)
    scores = scores.masked_fill(~past, float("-inf"))
    own = (q * k).sum(-1, keepdim=True) * scale  # [F, B, H, T, 1]
    attn = torch.softmax(torch.cat([scores, own], -1).float(), -1).to(q.dtype)
    out = torch.einsum("fbhts,bhsd->fbhtd", attn[..., :t], vd) + attn[..., t:] * v
    f, b, h, _, hd = out.shape
    return states + block.attn.proj(out.transpose(2, 3).reshape(f, b, t, h * hd))


def expand(block: AdaptiveBlock, states: Tensor, choices: int) -> Tensor:
    """The FFN half for every module: [F, B, T, d] -> [F·C, B, T, d], pattern f·C + c."""
    h = block.ffn_norm(states)
    flat = h.reshape(-1, h.shape[-1])
    outs = [states + block.ffn.module(flat, c).view_as(states) for c in range(choices)]
    return torch.stack(outs, 1).flatten(0, 1)


def final_losses(model: AdaptiveForCausalLM, states: Tensor, targets: Tensor) -> Tensor:
    """Per-token cross-entropy [F, B, T] of final states [F, B, T, d] against [B, T]."""
    logits = model.lm_head(model.norm(states)).float()
    f = logits.shape[0]
    tgt = targets.expand(f, *targets.shape)
    return F.cross_entropy(logits.flatten(0, 2), tgt.reshape(-1), reduction="none").view_as(tgt)


def big_counts(patterns: Tensor) -> Tensor:
    """Big modules per pattern: [..., L] -> [...].

    Example:
        >>> big_counts(torch.tensor([[0, 1, 0], [1, 2, 1]])).tolist()
        [2, 0]
    """
    return (patterns == BIG).sum(-1)
