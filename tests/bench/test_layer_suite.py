"""The layer benchmark suite: transformers adapters, memory tracker, results, resume, chart."""

import json

import pytest
import torch

from dynbench.cells import Cell, Setup, grid, record_key, run_cells, tune_top_p
from dynbench.hf_experts import (
    available_implementations,
    hf_experts,
    mixtral_loop,
    to_top_k_format,
)
from dynbench.memory import peak_memory
from dynbench.report import (
    append_records,
    load_records,
    markdown_summary,
    plot_ratios,
    target_rows,
)
from dynbench.suite import run_suite
from dynroute.dispatch import grouped, loop
from dynroute.layers.experts import ExpertWeights
from dynroute.routing import top_k, top_p

E, D, F = 6, 16, 32


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(E, D, 2 * F, generator=g) * 0.3, torch.randn(E, F, D, generator=g) * 0.3


@pytest.mark.parametrize("router", ["top2", "top_p"])
def test_transformers_implementations_match_loop_with_gradients(router):
    gate_up, down = weights()
    x = torch.randn(40, D)
    logits = torch.randn(40, E)
    r = top_k(logits, 2) if router == "top2" else top_p(logits, 0.6)
    want = loop(x, r, ExpertWeights(gate_up, down))
    index, w = to_top_k_format(r)
    padded = bool((index == E).any())
    assert padded == (router == "top_p")
    impls = available_implementations()
    assert "eager" in impls
    g = torch.randn(40, D)
    gu_leaf = gate_up.clone().requires_grad_()
    (want_grad,) = torch.autograd.grad(loop(x, r, ExpertWeights(gu_leaf, down)), [gu_leaf], g)
    for impl in impls:
        m = hf_experts(gate_up, down, impl, padded)
        y = m(x, index, w)
        torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
        # their [E, 2f, d] parameter is our [E, d, 2f] transposed: same storage, no copy
        assert m.gate_up_proj.data_ptr() == gate_up.data_ptr()
        (got,) = torch.autograd.grad(y, [m.gate_up_proj], g)
        torch.testing.assert_close(got.transpose(1, 2), want_grad, atol=1e-4, rtol=1e-4)
    fn, leaves = mixtral_loop(gate_up, down)
    torch.testing.assert_close(fn(x, index, w), want, atol=1e-5, rtol=1e-5)
    assert len(leaves) == 3 * E


def test_top_k_format_round_trip():
    r = top_p(torch.randn(30, E), 0.7)
    index, w = to_top_k_format(r)
    assert index.shape == (30, int(r.experts_per_token().max()))
    dense = torch.zeros(30, E + 1).scatter_add_(1, index, w)
    torch.testing.assert_close(dense[:, :E], r.dense_weights())
    assert torch.all(dense[:, E] == 0)


def test_peak_memory_counts_live_tensors_and_excludes_grads():
    assert peak_memory(lambda: torch.ones(256) + 1).total == 2048
    a = torch.ones(1024)

    def three_temporaries():
        b = a * 2  # 4 KiB
        c = b + 1  # 4 KiB, b still alive
        del b
        return c * 3  # 4 KiB, c alive

    assert peak_memory(three_temporaries).total == 8192
    w = torch.ones(1024, requires_grad=True)
    m = peak_memory(lambda: (w * w).sum().backward(), [w])
    assert m.total - m.activations >= 4096  # w.grad left out


def test_grouped_activation_memory_within_bound():
    """fwd+bwd activation memory of grouped stays within 1.25x the dense bound's."""
    n, e, d, f = 256, 8, 64, 256
    x = torch.randn(n, d, requires_grad=True)
    r = top_k(torch.randn(n, e), 2)
    gu = torch.randn(e, d, 2 * f, requires_grad=True)
    dn = torch.randn(e, f, d, requires_grad=True)
    rows = x.detach()[r.token].requires_grad_()
    g0, d0 = gu.detach()[0].requires_grad_(), dn.detach()[0].requires_grad_()

    def bound():
        h = rows @ g0
        ((torch.nn.functional.silu(h[:, :f]) * h[:, f:]) @ d0).sum().backward()

    ours = peak_memory(lambda: grouped(x, r, ExpertWeights(gu, dn)).sum().backward(), [gu, dn])
    ref = peak_memory(bound, [g0, d0])
    assert ours.activations <= 1.25 * ref.activations
    # the composed autograd path keeps more alive: the fused op is what saves memory
    x.grad = gu.grad = dn.grad = None
    composed = peak_memory(
        lambda: grouped(x, r, ExpertWeights(gu, dn), path="autograd").sum().backward(), [gu, dn]
    )
    assert composed.activations > ours.activations


def test_tune_top_p_hits_target():
    p = tune_top_p(64)
    k = top_p(torch.randn(4096, 64), p).mean_experts()
    assert abs(k - 1.5) < 0.1


def test_grid_orders_and_filters():
    cells = grid([8, 64], [512, 1], ["top2", "top8"], ["fwd"])
    assert cells[0] == Cell("top2", 8, 1, "fwd")
    assert all(not (c.router == "top8" and c.num_experts == 8) for c in cells)
    assert len(cells) == 2 * 3
    with pytest.raises(ValueError, match="unknown router"):
        grid([8], [1], ["top3"], ["fwd"])


def test_cell_records_have_the_issue_fields():
    (records,) = run_cells(grid([4], [8], ["top_p"], ["fwd+bwd"]), Setup(32, 64, repeats=1))
    by = {r["impl"]: r for r in records}
    assert {"grouped", "loop", "bound", "floor", "hf_eager", "mixtral_loop"} <= set(by)
    for r in records:
        for key in (
            "impl",
            "router",
            "num_experts",
            "tokens",
            "mode",
            "seconds",
            "bound_seconds",
            "mean_experts",
        ):
            assert key in r
    g = by["grouped"]
    assert g["seconds"] > 0 and g["mode"] == "fwd+bwd" and g["p"] is not None
    assert g["activation_bytes"] > 0 and g["bound_activation_bytes"] > 0


def _rec(impl, router, n, seconds, k=2.0, mode="fwd+bwd"):
    return {
        "impl": impl,
        "router": router,
        "num_experts": 8,
        "tokens": n,
        "mode": mode,
        "seconds": seconds,
        "bound_seconds": 1.0,
        "floor_seconds": 0.8,
        "mean_experts": k,
        "d_model": 4,
        "d_ff": 8,
        "device": "cpu",
        "dtype": "float32",
        "machine": "m",
        "threads": 2,
        "torch": "t",
        "transformers": "x",
    }


def test_target_rows_and_markdown():
    recs = [
        _rec("grouped", "top2", 512, 1.05),
        _rec("hf_grouped_mm", "top2", 512, 1.5),
        _rec("hf_eager", "top2", 512, 2.1),
        _rec("grouped", "top_p", 512, 0.8, k=1.5),
        _rec("hf_eager", "top_p", 512, 1.6, k=1.5),
    ]
    rows = {r["router"]: r for r in target_rows(recs)}
    assert rows["top2"]["x_bound"] == pytest.approx(1.05)
    assert rows["top2"]["x_best_hf"] == pytest.approx(1.05 / 1.5)
    assert rows["top2"]["best_hf"] == "hf_grouped_mm"
    assert rows["top_p"]["topp_vs_top2"] == pytest.approx(0.8 / 1.05)
    assert rows["top_p"]["topp_expected"] == pytest.approx(0.75)
    md = markdown_summary(recs)
    assert "| top2 | 8 | 512 | fwd+bwd | 2.00 | 1.05 ✅" in md


def test_results_append_replace_and_chart(tmp_path):
    out = tmp_path / "layer.json"
    append_records(out, [_rec("grouped", "top2", 8, 2.0), _rec("bound", "top2", 8, 1.0)])
    append_records(out, [_rec("grouped", "top2", 8, 3.0)])  # same cell: replaced
    append_records(out, [_rec("grouped", "top2", 64, 1.5)])
    recs = load_records(out)
    assert sorted((r["tokens"], r["seconds"]) for r in recs) == [(8, 3.0), (64, 1.5)]
    assert isinstance(json.loads(out.read_text()), list)
    png = plot_ratios(recs, tmp_path / "layer.png")
    assert png is not None and png.stat().st_size > 1000


def test_suite_resumes(tmp_path):
    out = tmp_path / "layer.json"
    cells = grid([4], [8], ["top2"], ["fwd"])
    setup = Setup(32, 64, repeats=1, memory=False)
    from rich.console import Console

    quiet = Console(quiet=True)
    first = run_suite(cells, setup, out=out, console=quiet)
    assert first and {record_key(r) for r in first} == {record_key(first[0])}
    again = run_suite(cells, setup, out=out, console=quiet)
    assert again == []  # nothing re-measured
    assert len(load_records(out)) == len(first)


def test_suite_measures_this_machine_beside_another_machines_results(tmp_path):
    """A results file from another machine (the committed reference) is not "already done":
    `make bench` on a fresh clone measures, and keeps the other machine's records."""
    from rich.console import Console

    out = tmp_path / "layer.json"
    cells = grid([4], [8], ["top2"], ["fwd"])
    setup = Setup(32, 64, repeats=1, memory=False)
    quiet = Console(quiet=True)
    theirs = [dict(r, machine="Another CPU, 64 cores") for r in run_suite(cells, setup)]
    out.write_text(json.dumps(theirs))
    mine = run_suite(cells, setup, out=out, console=quiet)
    assert mine and all(r["machine"] != "Another CPU, 64 cores" for r in mine)
    stored = load_records(out)
    assert len(stored) == len(theirs) + len(mine)
    assert run_suite(cells, setup, out=out, console=quiet) == []  # now done on this machine
