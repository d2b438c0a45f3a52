"""Frontier aggregation, interpolation and verdicts on synthetic numbers.

Every expectation is computed independently here (numpy interpolation, statistics over
seeds), never copied from the code under test.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynroute.frontier import (
    NOISE_SE,
    expert_flops_per_token,
    frontier_loss,
    judge,
    markdown_table,
    plot_frontier,
    record,
    summarise,
    verdict_sentence,
)

losses = st.floats(1.0, 8.0, allow_nan=False)


def _top_k(seed: int, losses_by_k: dict[int, float], flops_per_k: float = 1.0) -> list[dict]:
    return [
        record("top_k", f"top_k-k{k}", f"top_k(k={k})", seed, loss, k * flops_per_k, float(k))
        for k, loss in losses_by_k.items()
    ]


@given(
    st.lists(losses, min_size=2, max_size=4),
    st.floats(0.0, 1.0),
)
def test_frontier_is_the_piecewise_linear_join_of_its_points(ys: list[float], u: float) -> None:
    xs = [float(i + 1) for i in range(len(ys))]
    x = xs[0] + u * (xs[-1] - xs[0])
    got = frontier_loss(list(zip(xs, ys, strict=True))[::-1], x)  # order does not matter
    assert got == pytest.approx(float(np.interp(x, xs, ys)), abs=1e-9)
    assert frontier_loss(list(zip(xs, ys, strict=True)), xs[-1] + 0.5) is None
    assert frontier_loss(list(zip(xs, ys, strict=True)), xs[0] - 0.5) is None


@given(st.lists(losses, min_size=2, max_size=6), st.lists(st.floats(0.5, 4.0), min_size=1))
def test_summaries_are_mean_and_sample_std_over_seeds(ys: list[float], ks: list[float]) -> None:
    k = ks[0]
    recs = [record("p", "p", "p(x)", s, y, 6.0 * k, k) for s, y in enumerate(ys)]
    (s,) = summarise(recs)
    assert s.seeds == tuple(range(len(ys)))
    assert s.val_loss == pytest.approx(statistics.fmean(ys))
    assert s.val_loss_std == pytest.approx(statistics.stdev(ys))
    assert s.expert_flops == pytest.approx(6.0 * k) and s.mean_experts == pytest.approx(k)


@given(
    st.lists(st.tuples(losses, losses, st.floats(-0.3, 0.3)), min_size=2, max_size=5),
    st.floats(1.05, 1.95),
)
def test_margins_are_paired_by_seed(seeds: list[tuple[float, float, float]], k: float) -> None:
    recs = []
    expected = []
    for seed, (top1, top2, offset) in enumerate(seeds):
        recs += _top_k(seed, {1: top1, 2: top2})
        edge = float(np.interp(k, [1.0, 2.0], [top1, top2]))
        recs.append(record("top_p", "top_p-x", "top_p(p=x)", seed, edge - offset, k, k))
        expected.append(offset)
    (j,) = judge(recs)
    assert list(j.margins) == pytest.approx(expected, abs=1e-9)
    se = statistics.stdev(expected) / math.sqrt(len(expected))
    assert j.margin == pytest.approx(statistics.fmean(expected), abs=1e-9)
    assert j.margin_se == pytest.approx(se, abs=1e-9)
    mean = statistics.fmean(expected)
    if abs(mean) > NOISE_SE * se + 1e-9:
        assert j.verdict == ("below" if mean > 0 else "above")
    elif abs(mean) < NOISE_SE * se - 1e-9:
        assert j.verdict == "on"


def _sweep(offsets: list[float], k: float = 1.5, noise: float = 0.05) -> list[dict]:
    """Three seeds whose top-k losses move together by seed (shared noise), a router whose
    loss sits ``offsets[s]`` below the frontier at k̄ ``k``."""
    rng = np.random.default_rng(0)
    recs = []
    for seed, offset in enumerate(offsets):
        shift = float(rng.normal(0, noise))  # what pairing by seed removes
        top = {1: 3.0 + shift, 2: 2.8 + shift, 3: 2.75 + shift}
        recs += _top_k(seed, top)
        edge = float(np.interp(k, [1, 2, 3], list(top.values())))
        recs.append(record("dyn", f"dyn-{k}", f"dyn(k̄={k})", seed, edge - offset, k, k))
    return recs


def test_verdicts_below_above_on_one_seed_and_outside() -> None:
    below = judge(_sweep([0.05, 0.06, 0.055]))[0]
    above = judge(_sweep([-0.05, -0.06, -0.055]))[0]
    on = judge(_sweep([0.05, -0.04, 0.01]))[0]
    single = judge(_sweep([0.05]))[0]
    outside = judge(_sweep([0.05, 0.05, 0.05], k=3.5))[0]
    assert (below.verdict, above.verdict, on.verdict) == ("below", "above", "on")
    assert below.margin == pytest.approx(0.055) and above.margin == pytest.approx(-0.055)
    assert single.verdict == "one seed" and math.isnan(single.margin_se)
    assert outside.verdict == "outside" and outside.margins == ()


def test_shared_seed_noise_cancels_in_the_paired_margin() -> None:
    # top-k losses swing by ~0.5 between seeds, far more than the 0.03 nats to detect
    recs = _sweep([0.03, 0.031, 0.029], noise=0.5)
    (j,) = judge(recs)
    spread = statistics.stdev(r["val_loss"] for r in recs if r["family"] == "dyn")
    assert spread > 0.1  # unpaired, 0.03 nats would be lost in the noise
    assert j.verdict == "below" and j.margin == pytest.approx(0.03, abs=1e-9)


def test_judge_needs_two_top_k_points_per_seed() -> None:
    recs = _top_k(0, {1: 3.0, 2: 2.8}) + _top_k(1, {1: 3.0})
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\]"):
        judge(recs)


def test_verdict_sentence_names_what_won() -> None:
    recs = _sweep([0.05, 0.06, 0.055])
    recs += [
        record("worse", "worse", "worse(x)", r["seed"], r["val_loss"] + 0.3, 1.5, 1.5)
        for r in recs
        if r["family"] == "dyn"
    ]
    text = verdict_sentence(judge(recs))
    assert text.startswith("Below the top-k frontier beyond seed noise: dyn(k̄=1.5)")
    assert "Above it (worse for their compute): worse(x)" in text
    none_wins = verdict_sentence(judge(_sweep([-0.05, -0.06, -0.055])))
    assert none_wins.startswith("No router beats the top-k frontier")
    assert "0.055 nats above it" in none_wins
    one = verdict_sentence(judge(_sweep([0.02])))
    assert "One seed" in one and "dyn(k̄=1.5) at k̄ 1.50 (0.020 nats)" in one


def test_expert_flops_count_each_layer_at_its_own_k() -> None:
    # SwiGLU: three d_model x d_ff matrices, 2 FLOPs per multiply-add, per expert and layer
    assert expert_flops_per_token(4, 8, [1.0, 3.0]) == 4.0 * 2 * 3 * 4 * 8


def test_table_and_plot(tmp_path: Path) -> None:
    recs = _sweep([0.05, 0.06, 0.055])
    lines = markdown_table(recs).splitlines()
    assert len(lines) == 2 + 4  # header, rule, top-1/2/3, the router
    assert lines[-1].startswith("| dyn(k̄=1.5) | 3 | 1.50 ± 0.00 |")
    assert lines[-1].endswith("| +0.0550 ± 0.0058 | below |")
    assert all(line.endswith("| frontier |") for line in lines[2:5])
    png = plot_frontier(recs, tmp_path / "f.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
