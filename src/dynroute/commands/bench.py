"""`dynroute bench layer`: the MoE-layer speed suite (see benchmarks/layer.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(help="Benchmarks (ratios measured side by side in one process).")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command("layer")
def layer(
    full: Annotated[
        bool, typer.Option("--full/--quick", help="The whole issue grid, or a small one.")
    ] = False,
    tokens: Annotated[
        list[int] | None, typer.Option(help="Tokens per call N (repeatable).")
    ] = None,
    experts: Annotated[
        list[int] | None, typer.Option(help="Number of experts E (repeatable).")
    ] = None,
    routers: Annotated[
        list[str] | None, typer.Option(help="top2, top8, top_p (repeatable).")
    ] = None,
    modes: Annotated[list[str] | None, typer.Option(help="fwd, fwd+bwd (repeatable).")] = None,
    d_model: Annotated[int, typer.Option(help="Model width d.")] = 1024,
    d_ff: Annotated[int, typer.Option(help="Expert hidden width f (SwiGLU).")] = 2816,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    repeats: Annotated[int, typer.Option(help="Interleaved rounds; the median is kept.")] = 5,
    threads: Annotated[
        int | None, typer.Option(help="torch threads (default: torch's); 1 is steadier.")
    ] = None,
    memory: Annotated[
        bool, typer.Option("--memory/--no-memory", help="Measure fwd+bwd peak memory.")
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="Append results to this JSON file (resumable).")
    ] = None,
    chart: Annotated[Path | None, typer.Option(help="Write the ratio chart (PNG) here.")] = None,
) -> None:
    """dynroute vs transformers' expert implementations vs the dense-GEMM bound."""
    import torch

    from dynroute.bench.layer import FULL, QUICK, Setup, grid
    from dynroute.bench.suite import run_suite

    if dtype not in ("float32", "bfloat16", "float16"):
        raise typer.BadParameter(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("device is cuda but torch sees no GPU; use --device cpu")
    if threads:
        torch.set_num_threads(threads)
    base = FULL if full else QUICK
    try:
        cells = grid(
            experts or base["experts"],
            tokens or base["tokens"],
            routers or base["routers"],
            modes or base["modes"],
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    setup = Setup(d_model, d_ff, device, dtype, repeats, memory=memory)
    run_suite(cells, setup, out=out, chart=chart)
