"""The oracle equals brute force: one full forward per (pattern, position) on 2 layers."""

from __future__ import annotations

import pytest
import torch

from dynroute.adaptive import BIG, AdaptiveConfig, AdaptiveForCausalLM
from dynroute.adaptive.oracle import all_patterns, random_patterns, run_oracle, search
from dynroute.adaptive.probe import big_counts, default_context
from dynroute.evaluation import token_losses


def model_2l(**kw: object) -> AdaptiveForCausalLM:
    cfg = AdaptiveConfig(
        vocab_size=30, d_model=32, n_layers=2, n_heads=2, d_ff=64, small_ratio=8, **kw
    )
    m = AdaptiveForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights: patterns differ clearly in loss
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(8)
    return m


@torch.no_grad()
def brute_force(model: AdaptiveForCausalLM, x: torch.Tensor, y: torch.Tensor, skip: bool):
    """losses [P, B, T]: pattern p on position t and after, the context (big) before t."""
    patterns = all_patterns(2, skip)
    b, t = x.shape
    out = torch.empty(len(patterns), b, t)
    for i, p in enumerate(patterns):
        for pos in range(t):
            routes = torch.full((b, t, 2), BIG, dtype=torch.long)
            routes[:, pos:] = p  # causal: positions after t do not change t's loss
            logits = model(x, routes=routes).logits
            out[i, :, pos] = token_losses(logits, y)[:, pos]
    return out


@pytest.mark.parametrize("skip", [False, True])
def test_search_equals_brute_force(skip: bool) -> None:
    model = model_2l()
    ids = torch.randint(0, 30, (3, 10))
    x, y = ids[:, :-1], ids[:, 1:]
    want = brute_force(model, x, y, skip)
    ctx = default_context(model, x, y, torch.full((*x.shape, 2), BIG))
    got, pats = search(model, ctx, skip)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (pats[:, 0, 0].long() == all_patterns(2, skip)).all()
    assert want.std(0).mean() > 0.05  # the patterns really differ

    report = run_oracle(model, [(x, y)], skip=skip, num_random=5)
    counts = big_counts(all_patterns(2, skip))
    for row in report.rows:
        k = row["budget"]
        best = want[counts == k].min(0).values.mean()
        assert row["oracle_loss"] == pytest.approx(float(best), abs=1e-4)
        assert row["oracle_loss"] <= row["random_best_loss"] + 1e-5
        assert row["random_best_loss"] <= row["random_mean_loss"] + 1e-9
        # a static pattern's loss is the brute-force mean of that pattern
    all_big = want[0].mean()
    assert report.rows[-1]["random_mean_loss"] == pytest.approx(float(all_big), abs=1e-4)
    assert report.context_loss == pytest.approx(float(all_big), abs=1e-4)


def test_beam_with_room_for_everything_is_exhaustive() -> None:
    model = model_2l()
    ids = torch.randint(0, 30, (2, 9))
    windows = [(ids[:, :-1], ids[:, 1:])]
    exact = run_oracle(model, windows, num_random=3)
    beam = run_oracle(model, windows, num_random=3, max_exhaustive_layers=1, beam_width=4)
    narrow = run_oracle(model, windows, num_random=3, max_exhaustive_layers=1, beam_width=1)
    assert exact.method == "exhaustive" and beam.method == "beam" and beam.beam_width == 4
    for e, b, n in zip(exact.rows, beam.rows, narrow.rows, strict=True):
        assert b["oracle_loss"] == pytest.approx(e["oracle_loss"], abs=1e-5)
        assert n["oracle_loss"] >= e["oracle_loss"] - 1e-5  # a beam only misses patterns


def test_router_loss_and_bad_budgets() -> None:
    model = model_2l(routing="router")
    ids = torch.randint(0, 30, (2, 9))
    report = run_oracle(model, [(ids[:, :-1], ids[:, 1:])], num_random=3)
    filled = [r for r in report.rows if r["router_loss"] is not None]
    assert len(filled) == 1 and 0 <= filled[0]["router_big_layers"] <= 2
    with pytest.raises(ValueError, match="out of range"):
        run_oracle(model, [(ids[:, :-1], ids[:, 1:])], budgets=[3])


def test_random_patterns_with_skip() -> None:
    p = random_patterns(5, 1, 200, skip=True)
    assert (big_counts(p) == 1).all() and set(p.unique().tolist()) == {0, 1, 2}
