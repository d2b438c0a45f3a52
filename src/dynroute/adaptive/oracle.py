"""Stage 2 of Duo-LLM: the best routing pattern per token under a budget of big layers.

What is searched, precisely: for every scored token, every pattern of modules over
the L layers (big / small, or big / small / skip with ``skip=True``) applied **to that
token only**, while every other position runs the *context route* (default: big in
every layer, the full model); see :mod:`dynroute.adaptive.probe`. The budget k counts
big layers: a pattern has budget k when exactly k of its layers run the big module.
For each k the oracle keeps, per token, the pattern with the lowest loss, and reports
the mean of those minima (``oracle_loss``).

- L ≤ 8 (``max_exhaustive_layers``): exhaustive, all C^L patterns, batched as a tree
  (the states of all patterns of a window advance one layer at a time, C× more after
  each FFN; no Python loop over patterns).
- L > 8: **beam search** (flagged ``"method": "beam"``): after each layer, per token and
  per number of big layers so far, the ``beam_width`` partial patterns whose
  logit-lens loss (final norm + LM head on the partial state) is lowest survive; an
  upper bound on the true oracle loss.

Baselines with the same context: ``random_mean_loss`` / ``random_best_loss``, the mean
and the best over R random *static* patterns of budget k (one pattern for every token);
``router_loss``, the loss when each token follows the trained routers (argmax per layer
on its own state), reported on the row of the budget nearest to its mean big layers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dynroute.adaptive.config import BIG, SKIP, SMALL
from dynroute.adaptive.model import AdaptiveForCausalLM
from dynroute.adaptive.probe import (
    Context,
    attend,
    big_counts,
    default_context,
    expand,
    final_losses,
)

__all__ = [
    "CONTEXTS",
    "OracleReport",
    "all_patterns",
    "probe_choices",
    "random_patterns",
    "run_oracle",
    "search",
]

#: How the other positions (the context) are routed.
CONTEXTS = ("big", "small", "model")
MAX_EXHAUSTIVE_LAYERS = 8
# Probe attention scores per chunk (F·B·H·T·T floats): bounds memory (~200 MB).
_SCORE_BUDGET = 50_000_000


def all_patterns(layers: int, skip: bool = False) -> Tensor:
    """Every pattern [C^L, L] (0 big, 1 small, 2 skip), in the probe's order.

    Example:
        >>> all_patterns(2).tolist()
        [[0, 0], [0, 1], [1, 0], [1, 1]]
        >>> all_patterns(3, skip=True).shape
        torch.Size([27, 3])
    """
    modules = (BIG, SMALL, SKIP) if skip else (BIG, SMALL)
    return torch.tensor(list(itertools.product(modules, repeat=layers)), dtype=torch.long)


def random_patterns(
    layers: int, budget: int, count: int, skip: bool = False, seed: int = 0
) -> Tensor:
    """``count`` random patterns [count, L] with exactly ``budget`` big layers.

    The big layers are a uniform random subset; the others small (or, with ``skip``,
    small or skip with probability 1/2 each).

    Example:
        >>> p = random_patterns(6, 2, 5)
        >>> p.shape, big_counts(p).tolist()
        (torch.Size([5, 6]), [2, 2, 2, 2, 2])
    """
    g = torch.Generator().manual_seed(seed * 1009 + budget)
    rest = torch.full((count, layers), SMALL, dtype=torch.long)
    if skip:
        rest[torch.rand(count, layers, generator=g) < 0.5] = SKIP
    order = torch.rand(count, layers, generator=g).argsort(-1)
    big = torch.zeros(count, layers, dtype=torch.bool).scatter(1, order[:, :budget], True)
    return rest.masked_fill(big, BIG)


def _chunk_windows(frontier: int, heads: int, t: int) -> int:
    """Windows per chunk so that F·B·H·T·T attention scores stay within budget."""
    return max(1, _SCORE_BUDGET // max(frontier * heads * t * t, 1))


def _chunks(
    windows: Iterable[tuple[Tensor, Tensor]], frontier: int, heads: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """``windows`` cut into chunks of :func:`_chunk_windows` windows (memory bound)."""
    for inputs, targets in windows:
        step = _chunk_windows(frontier, heads, inputs.shape[1])
        for s in range(0, inputs.shape[0], step):
            yield inputs[s : s + step], targets[s : s + step]


@torch.no_grad()
def search(
    model: AdaptiveForCausalLM, ctx: Context, skip: bool = False, beam_width: int | None = None
) -> tuple[Tensor, Tensor]:
    """Losses of candidate patterns for every token of ``ctx``'s windows.

    Args:
        model, ctx: the model and :func:`~dynroute.adaptive.probe.default_context`.
        skip: also search skip; beam_width: None = exhaustive, else the beam width per
            number of big layers.

    Returns:
        (losses [F, B, T], patterns [F, B, T, L] int8): exhaustive: F = C^L, the same
        patterns for every token, in :func:`all_patterns` order.
    """
    c = 3 if skip else 2
    b, t, _ = ctx.embeds.shape
    states = ctx.embeds.unsqueeze(0)
    pats = torch.zeros(1, b, t, 0, dtype=torch.int8, device=states.device)
    modules = torch.arange(c, dtype=torch.int8, device=states.device)
    layers = len(model.blocks)
    for i, block in enumerate(model.blocks):
        states = expand(block, attend(block, states, ctx, i), c)
        f = pats.shape[0]
        new = modules.view(1, c, 1, 1, 1).expand(f, c, b, t, 1)
        pats = torch.cat([pats.unsqueeze(1).expand(f, c, b, t, i), new], -1).flatten(0, 1)
        if beam_width is not None and i < layers - 1:
            states, pats = _prune(model, states, pats, ctx.targets, beam_width)
    return final_losses(model, states, ctx.targets), pats


def _prune(
    model: AdaptiveForCausalLM, states: Tensor, pats: Tensor, targets: Tensor, width: int
) -> tuple[Tensor, Tensor]:
    """Keep, per token and number of big layers so far, the ``width`` best partial patterns.

    The score is the logit-lens loss of the partial state. Group sizes are the same for
    every token (induction), so the kept slots form a rectangular frontier.
    """
    score = final_losses(model, states, targets)
    groups = big_counts(pats)  # [F, B, T]
    order = (groups.float() * 1e6 + score.clamp(max=1e5)).argsort(0)
    sizes = torch.bincount(groups[:, 0, 0], minlength=pats.shape[-1] + 1).tolist()
    starts = [0, *itertools.accumulate(sizes)][:-1]
    keep = [p for s, n in zip(starts, sizes, strict=True) for p in range(s, s + min(width, n))]
    if len(keep) == states.shape[0]:
        return states, pats
    idx = order[keep]  # [F', B, T]
    states = states.gather(0, idx.unsqueeze(-1).expand(-1, -1, -1, states.shape[-1]))
    pats = pats.gather(0, idx.unsqueeze(-1).expand(-1, -1, -1, pats.shape[-1]))
    return states, pats


@torch.no_grad()
def probe_choices(
    model: AdaptiveForCausalLM,
    ctx: Context,
    choose: Callable[[int, Tensor], Tensor],
    slots: int = 1,
) -> tuple[Tensor, Tensor]:
    """Follow a rule layer by layer: ``choose(layer, normed states [F, B, T, d]) ->
    modules [F, B, T]``, for ``slots`` probe states per token.

    Returns:
        (losses [F, B, T], routes taken [F, B, T, L]).
    """
    states = ctx.embeds.unsqueeze(0).expand(slots, *ctx.embeds.shape)
    taken = []
    for i, block in enumerate(model.blocks):
        states = attend(block, states, ctx, i)
        h = block.ffn_norm(states)
        choice = choose(i, h)
        out = torch.zeros_like(states)
        for c in (BIG, SMALL):
            mask = choice == c
            if bool(mask.any()):
                out[mask] = block.ffn.module(h[mask], c)
        states = states + out
        taken.append(choice)
    return final_losses(model, states, ctx.targets), torch.stack(taken, -1)


@dataclass
class OracleReport:
    """What :func:`run_oracle` measured.

    Attributes:
        rows: per budget ``{budget, oracle_loss, random_mean_loss, random_best_loss,
            router_loss}`` (+ ``oracle_ppl``; ``router_big_layers`` on the router's row).
        method: ``"exhaustive"`` or ``"beam"``; beam_width: its width (None if exhaustive).
        layers, skip, context, tokens: what was searched, on how many tokens.
        context_loss: mean loss with every token on the context route.
        oracle_big_share: [K][L] share of tokens whose oracle pattern at budget k runs
            big at layer l.
        token_ids, positions: [N] of the scored tokens; context_losses [N];
        oracle_losses: [K, N] per-token oracle loss per budget (difficulty = how much
            it drops with more budget).
        router_losses, router_big: [N] the router's per-token loss and number of big
            layers (None without routers).
    """

    rows: list[dict[str, Any]]
    method: str
    beam_width: int | None
    layers: int
    skip: bool
    context: str
    tokens: int
    context_loss: float
    oracle_big_share: list[list[float]]
    token_ids: np.ndarray = field(repr=False)
    positions: np.ndarray = field(repr=False)
    targets: np.ndarray = field(repr=False)
    context_losses: np.ndarray = field(repr=False)
    oracle_losses: np.ndarray = field(repr=False)
    router_losses: np.ndarray | None = field(default=None, repr=False)
    router_big: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-token arrays left out)."""
        keys = "method beam_width layers skip context tokens context_loss oracle_big_share rows"
        return {k: getattr(self, k) for k in keys.split()}


def _context_routes(model: AdaptiveForCausalLM, context: str, shape: tuple[int, ...]) -> Any:
    if context not in CONTEXTS:
        raise ValueError(f"unknown context {context!r}; choose one of {list(CONTEXTS)}")
    if context == "model":
        return None
    return torch.full((*shape, len(model.blocks)), BIG if context == "big" else SMALL)


def _checked_budgets(budgets: list[int] | None, layers: int) -> list[int]:
    """The budgets asked for, sorted and unique (default 0..L); out of range raises."""
    budgets = list(range(layers + 1)) if budgets is None else sorted(set(budgets))
    bad = [k for k in budgets if not 0 <= k <= layers]
    if bad:
        raise ValueError(f"budgets {bad} out of range: the model has {layers} layers (0..{layers})")
    return budgets


@dataclass
class _Tally:
    """What :func:`run_oracle` collects chunk by chunk (lists of per-chunk tensors)."""

    static_sum: Tensor  # [U] summed loss of each distinct random static pattern
    token_ids: list[Tensor] = field(default_factory=list)
    positions: list[Tensor] = field(default_factory=list)
    targets: list[Tensor] = field(default_factory=list)
    context: list[Tensor] = field(default_factory=list)
    oracle: list[Tensor] = field(default_factory=list)  # [K, n]
    oracle_big: list[Tensor] = field(default_factory=list)  # [K, n, L] bool as float
    router: list[Tensor] = field(default_factory=list)  # [n]
    router_big: list[Tensor] = field(default_factory=list)  # [n] big layers per token
    router_big_total: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(len(i) for i in self.token_ids)


def _best_per_budget(losses: Tensor, pats: Tensor, budgets: list[int]) -> tuple[Tensor, Tensor]:
    """Per budget k, each token's lowest loss among patterns with k big layers, and where
    that pattern runs big: ([K, N], [K, N, L])."""
    counts = big_counts(pats)
    best, best_big = [], []
    for k in budgets:
        masked = losses.masked_fill(counts != k, float("inf"))
        value, arg = masked.min(0)  # [B, T]
        best.append(value)
        chosen = pats.gather(0, arg[None, ..., None].expand(1, *arg.shape, pats.shape[-1]))[0]
        best_big.append((chosen == BIG).float().flatten(0, 1))  # [N, L]
    return torch.stack(best).flatten(1), torch.stack(best_big)


def _score_chunk(
    model: AdaptiveForCausalLM,
    x: Tensor,
    ctx: Context,
    tally: _Tally,
    budgets: list[int],
    statics: Tensor,
    skip: bool,
    width: int | None,
) -> None:
    """Context, oracle, random-static and router losses of one chunk of windows ``x``."""
    ctx_loss, _ = probe_choices(model, ctx, lambda i, h: ctx.routes[None, ..., i])
    oracle, oracle_big = _best_per_budget(*search(model, ctx, skip, width), budgets)
    tally.oracle.append(oracle)
    tally.oracle_big.append(oracle_big)
    fixed = statics.to(x.device)
    static, _ = probe_choices(
        model, ctx, lambda i, h: fixed[:, i, None, None].expand(h.shape[:3]), slots=len(statics)
    )
    tally.static_sum += static.double().flatten(1).sum(1)
    if model.config.routing == "router":
        r_loss, r_routes = probe_choices(
            model, ctx, lambda i, h: model.blocks[i].ffn.gate(h).argmax(-1)
        )
        tally.router.append(r_loss.flatten())
        tally.router_big.append((r_routes == BIG).sum(-1).flatten())
        tally.router_big_total += float((r_routes == BIG).sum())
    tally.token_ids.append(x.flatten())
    tally.positions.append(torch.arange(x.shape[1]).expand(x.shape).flatten())
    tally.targets.append(ctx.targets.flatten())
    tally.context.append(ctx_loss.flatten())


def _nearest(budgets: list[int], big_layers: float) -> int:
    """The budget nearest to ``big_layers`` rounded (the first of a tie)."""
    return min(budgets, key=lambda b: abs(b - round(big_layers)))


def _budget_rows(
    budgets: list[int],
    oracle: Tensor,
    static_mean: Tensor,
    router_losses: Tensor | None,
    router_big_mean: float,
) -> list[dict[str, Any]]:
    """One row per budget; the router's loss on the row nearest its mean big layers."""
    rows = []
    for j, k in enumerate(budgets):
        row: dict[str, Any] = {
            "budget": k,
            "oracle_loss": float(oracle[j].mean()),
            "random_mean_loss": float(static_mean[j].mean()),
            "random_best_loss": float(static_mean[j].min()),
            "router_loss": None,
        }
        row["oracle_ppl"] = math.exp(min(row["oracle_loss"], 50.0))
        if router_losses is not None and k == _nearest(budgets, router_big_mean):
            row["router_loss"] = float(router_losses.mean())
            row["router_big_layers"] = router_big_mean
        rows.append(row)
    return rows


@torch.no_grad()
def run_oracle(
    model: AdaptiveForCausalLM,
    windows: Iterable[tuple[Tensor, Tensor]],
    budgets: list[int] | None = None,
    skip: bool = False,
    num_random: int = 100,
    context: str = "big",
    beam_width: int = 8,
    max_exhaustive_layers: int = MAX_EXHAUSTIVE_LAYERS,
    seed: int = 0,
) -> OracleReport:
    """Oracle, random-pattern and router losses per budget over ``windows``.

    Args:
        model: an adaptive model (eval mode is set here).
        windows: ``(inputs [B, T], targets [B, T])`` batches, e.g. ``iter_eval_batches``
            (any iterable, read once).
        budgets: numbers of big layers (default 0..L).
        skip: search big / small / skip (3^L) instead of big / small (2^L).
        num_random: R random static patterns per budget.
        context: route of the other positions: ``"big"``, ``"small"`` or ``"model"``
            (the model's own evaluation routing).
        beam_width: beam per number of big layers when L > ``max_exhaustive_layers``.
        seed: of the random patterns.

    Returns:
        OracleReport.

    Example:
        >>> from dynroute.adaptive import AdaptiveConfig
        >>> m = AdaptiveForCausalLM(AdaptiveConfig(vocab_size=16, d_model=16, n_layers=2,
        ...                                       n_heads=2, d_ff=32))
        >>> ids = torch.randint(0, 16, (2, 9))
        >>> r = run_oracle(m, [(ids[:, :-1], ids[:, 1:])], num_random=4)
        >>> [row["budget"] for row in r.rows], r.method, r.tokens
        ([0, 1, 2], 'exhaustive', 16)
        >>> r.rows[2]["oracle_loss"] <= r.rows[2]["random_best_loss"] + 1e-6
        True
    """
    model.eval()
    layers = len(model.blocks)
    budgets = _checked_budgets(budgets, layers)
    exhaustive = layers <= max_exhaustive_layers
    width = None if exhaustive else beam_width
    c = 3 if skip else 2
    frontier = c**layers if exhaustive else (layers + 1) * beam_width * c
    # every random static pattern of every budget, each distinct one probed once
    statics = torch.cat([random_patterns(layers, k, num_random, skip, seed) for k in budgets])
    unique, inverse = statics.unique(dim=0, return_inverse=True)
    tally = _Tally(static_sum=torch.zeros(len(unique), dtype=torch.float64))
    for x, y in _chunks(windows, max(frontier, len(unique)), model.config.n_heads):
        ctx = default_context(model, x, y, _context_routes(model, context, tuple(x.shape)))
        _score_chunk(model, x, ctx, tally, budgets, unique, skip, width)
    if not tally.token_ids:
        raise ValueError("run_oracle: no windows to score")
    n = tally.tokens
    oracle = torch.cat(tally.oracle, 1)  # [K, N]
    static_mean = (tally.static_sum / n)[inverse].view(len(budgets), num_random)
    router_losses = torch.cat(tally.router) if tally.router else None
    context_losses = torch.cat(tally.context)
    return OracleReport(
        rows=_budget_rows(budgets, oracle, static_mean, router_losses, tally.router_big_total / n),
        method="exhaustive" if exhaustive else "beam",
        beam_width=width,
        layers=layers,
        skip=skip,
        context=context,
        tokens=n,
        context_loss=float(context_losses.mean()),
        oracle_big_share=torch.cat(tally.oracle_big, 1).mean(1).tolist(),
        token_ids=torch.cat(tally.token_ids).numpy(),
        positions=torch.cat(tally.positions).numpy(),
        targets=torch.cat(tally.targets).numpy(),
        context_losses=context_losses.numpy(),
        oracle_losses=oracle.numpy(),
        router_losses=None if router_losses is None else router_losses.numpy(),
        router_big=torch.cat(tally.router_big).numpy() if tally.router_big else None,
    )
