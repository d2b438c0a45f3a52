"""Regression guard on speed *ratios* (not absolute times), robust to a noisy shared machine.

pytest runs with ``--benchmark-disable`` by default, which makes the ``benchmark``
fixture call the function once; the ratios are asserted from our own interleaved
median timings either way, with generous bounds (measured ratios are in the comments).
"""

import torch

from dynbench.cells import swiglu
from dynbench.hf_experts import hf_experts, to_top_k_format
from dynbench.timing import Bench, time_interleaved
from dynroute.dispatch import grouped, loop
from dynroute.layers.experts import ExpertWeights
from dynroute.routing import top_k


def test_grouped_fwd_bwd_speed_ratios(benchmark):
    n, e, d, f = 512, 8, 256, 512
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, requires_grad=True)
    r = top_k(torch.randn(n, e, generator=g), 2)
    gate_up = (torch.randn(e, d, 2 * f, generator=g) * d**-0.5).requires_grad_()
    down = (torch.randn(e, f, d, generator=g) * f**-0.5).requires_grad_()
    w = ExpertWeights(gate_up, down)
    # the per-expert layout: separate leaves with the same values
    per = ExpertWeights(
        tuple(t.detach().clone().requires_grad_() for t in gate_up),
        tuple(t.detach().clone().requires_grad_() for t in down),
    )
    rows = x.detach()[r.token].requires_grad_()
    g0, d0 = gate_up.detach()[0].requires_grad_(), down.detach()[0].requires_grad_()
    index, weight = to_top_k_format(r)
    hf = hf_experts(gate_up, down, "grouped_mm")
    leaves = [x, gate_up, down, rows, g0, d0, *hf.parameters(), *per.tensors()]

    def reset():
        for t in leaves:
            t.grad = None

    def step(fn):
        return Bench(lambda: fn().sum().backward(), reset)

    benches = {
        "grouped": step(lambda: grouped(x, r, w)),
        "per_expert": step(lambda: grouped(x, r, per)),
        "loop": step(lambda: loop(x, r, w)),
        "hf_grouped_mm": step(lambda: hf(x, index, weight)),
        "bound": step(lambda: swiglu(rows, g0, d0)),
    }
    benchmark(benches["grouped"].run)
    # one thread: on a shared box, OpenMP threads spin-wait for a descheduled partner and
    # turn every timing into noise (we measured 20x CPU time with 2 threads under load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = {k: s.median for k, s in time_interleaved(benches, repeats=7).items()}
    finally:
        torch.set_num_threads(threads)
    # measured on a busy 2-core box: grouped/bound 1.08-1.21, loop/bound 1.72-1.96,
    # hf_grouped_mm/bound 1.09-1.13; on an idle one per_expert/bound 1.15-1.20 (loop 1.63-2.09)
    assert t["grouped"] < 2.5 * t["bound"], t
    assert t["grouped"] < 0.9 * t["loop"], t
    assert t["grouped"] < 1.4 * t["hf_grouped_mm"], t
    assert t["per_expert"] < 2.5 * t["bound"], t
    assert t["per_expert"] < 0.9 * t["loop"], t
