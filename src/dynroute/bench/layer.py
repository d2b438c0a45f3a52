"""Time one MoE layer's dispatch paths side by side, interleaved, median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from rich.table import Table

from dynroute.dispatch import ExpertWeights, dense, grouped, loop
from dynroute.routing import top_k, top_p


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each callable, run interleaved so machine noise hits all alike.

    Example:
        >>> sorted(median_times({"a": lambda: None, "b": lambda: None}, repeats=3))
        ['a', 'b']
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def time_layer(
    tokens: int,
    d_model: int,
    d_ff: int,
    num_experts: int,
    router: str = "top_k",
    repeats: int = 5,
    backward: bool = False,
    with_dense: bool | None = None,
    seed: int = 0,
) -> list[dict[str, float | str | int]]:
    """Time grouped, loop, (dense) and the bound for one shape; one record per impl.

    The bound is one dense SwiGLU GEMM chain over N·k̄ rows with one expert's
    weights: the arithmetic an MoE layer cannot avoid.

    Example:
        >>> rows = time_layer(16, 32, 64, 4, repeats=1)
        >>> sorted(r["impl"] for r in rows)
        ['bound', 'dense', 'grouped', 'loop']
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_model, generator=g)
    logits = torch.randn(tokens, num_experts, generator=g)
    routing = top_k(logits, 2) if router == "top_k" else top_p(logits, 0.5)
    weights = ExpertWeights(
        torch.randn(num_experts, d_model, 2 * d_ff, generator=g) * d_model**-0.5,
        torch.randn(num_experts, d_ff, d_model, generator=g) * d_ff**-0.5,
    )
    if backward:
        x.requires_grad_()
        weights = ExpertWeights(weights.gate_up.requires_grad_(), weights.down.requires_grad_())
    rows_bound = x.detach()[routing.token].clone().requires_grad_(backward)
    one = ExpertWeights(weights.gate_up[:1].detach(), weights.down[:1].detach())

    def bound() -> None:
        y = one.ffn(rows_bound, 0)
        if backward:
            y.backward(torch.ones_like(y))

    def call(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            y = fn(x, routing, weights)
            if backward:
                y.backward(torch.ones_like(y))

        return run

    fns: dict[str, Callable[[], object]] = {
        "bound": bound,
        "grouped": call(grouped),
        "loop": call(loop),
    }
    if with_dense if with_dense is not None else tokens * num_experts <= 64 * 1024:
        fns["dense"] = call(dense)
    with torch.inference_mode(not backward):
        times = median_times(fns, repeats)
    mode = "fwd+bwd" if backward else "fwd"
    return [
        {
            "impl": name,
            "router": router,
            "num_experts": num_experts,
            "tokens": tokens,
            "mode": mode,
            "seconds": t,
            "bound_seconds": times["bound"],
            "mean_experts": routing.mean_experts(),
        }
        for name, t in times.items()
    ]


def format_table(rows: list[dict[str, float | str | int]]) -> Table:
    """A rich table of seconds and ratios to the bound."""
    first = rows[0]
    table = Table(
        title=f"MoE layer, N={first['tokens']}, E={first['num_experts']}, {first['mode']}, "
        f"k̄={float(first['mean_experts']):.2f}"
    )
    for col in ("impl", "ms", "× bound"):
        table.add_column(col, justify="left" if col == "impl" else "right")
    for r in rows:
        table.add_row(
            str(r["impl"]),
            f"{1e3 * float(r['seconds']):.2f}",
            f"{float(r['seconds']) / float(r['bound_seconds']):.2f}",
        )
    return table
