"""`dynroute bench layer`: time the dispatch paths of one MoE layer."""

from __future__ import annotations

import typer

bench_app = typer.Typer(help="Benchmarks (ratios measured side by side in one process).")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command("layer")
def layer(
    tokens: int = typer.Option(512, help="Tokens per call."),
    d_model: int = typer.Option(1024),
    d_ff: int = typer.Option(2816),
    experts: int = typer.Option(8),
    repeats: int = typer.Option(5),
    backward: bool = typer.Option(False, "--backward/--forward-only"),
) -> None:
    """grouped vs loop vs dense vs the dense-GEMM bound for one shape."""
    from rich.console import Console

    from dynroute.bench.layer import format_table, time_layer

    rows = time_layer(tokens, d_model, d_ff, experts, repeats=repeats, backward=backward)
    Console().print(format_table(rows))
