"""`dynroute demo`: the main job — which router gives the lowest loss for its compute?

The recipe: :func:`~dynroute.frontier.demo.prepare_demo`, then :func:`~.run_demo`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dynroute.commands import options

RANK = 0

Routers = Annotated[
    list[str] | None,
    typer.Option(
        help="MoE router settings instead of the default list (repeat or comma-separate; "
        "at least two top_k:k=N form the frontier)."
    ),
]
PaperP = Annotated[
    float | None, typer.Option("--p", help="Paper-faithful top-p threshold (default 0.4).")
]
Seeds = Annotated[int, typer.Option(help="Seeds per router (noise estimate: >= 2).")]
Corpus = Annotated[str | None, typer.Option("--data", help="Corpus (default: stdlib).")]
Analysis = Annotated[
    bool, typer.Option("--analysis/--no-analysis", help="Routing analysis report.")
]
RoutingOnly = Annotated[bool, typer.Option("--routing-only", help="Only route one random batch.")]
Tokens = Annotated[int | None, typer.Option(help="Routing table: tokens (implies --routing-only).")]
ExpertCount = Annotated[
    int | None,
    typer.Option("--num-experts", help="Routing table: experts (implies --routing-only)."),
]


@options.command
def demo(
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default runs/demo; --fast: runs/demo-fast).")
    ] = None,
    config: options.OptionalConfig = None,
    data: Corpus = None,
    routers: Routers = None,
    p: PaperP = None,
    seeds: Seeds = 1,
    steps: options.Steps = None,
    fast: Annotated[bool, typer.Option("--fast", help="Tiny model, seconds.")] = False,
    threads: options.Threads = None,
    analysis: Analysis = True,
    progress: options.Progress = True,
    json_out: options.Json = False,
    routing_only: RoutingOnly = False,
    tokens: Tokens = None,
    num_experts: ExpertCount = None,
) -> None:
    """Train top-1/2/3 and dynamic routers on the same data; who is below the frontier?

    Config: --config (default configs/demo.toml). Writes OUT/report.md, OUT/results.json
    (what --json prints) and OUT/frontier.png; a rerun reuses finished runs.
    """
    from rich.console import Console

    if routing_only or tokens is not None or num_experts is not None:
        from dynroute.frontier.demo import routing_demo

        options.print_table(routing_demo(tokens or 2048, num_experts or 16, 0))
        return
    check_flags(p, routers, seeds, steps, threads)  # before torch is even imported
    from dynroute.frontier.demo import prepare_demo, run_demo

    out = out or Path("runs/demo-fast" if fast else "runs/demo")  # never a clash between them
    base, points, seed_list = prepare_demo(config, data, p, steps, seeds, fast, threads, routers)
    options.set_threads(base.train.threads)
    console = Console(stderr=json_out)
    resume = f"interrupted; finished runs are kept in {out}: rerun the same command to resume"
    with options.user_errors(interrupted=resume):
        results = run_demo(
            out, base, points, seed_list, progress, console, analysis,
            command=" ".join(["dynroute", *sys.argv[1:]]),
        )  # fmt: skip
    if json_out:
        options.print_json(results)


def check_flags(
    p: float | None, routers: list[str] | None, seeds: int, steps: int | None, threads: int | None
) -> None:
    """The demo's flag values, checked in well under a second.

    Example:
        >>> check_flags(1.5, None, 1, None, None)
        Traceback (most recent call last):
        ValueError: --p must be in (0, 1] (top-p's probability mass), got 1.5
    """
    if p is not None and not 0.0 < p <= 1.0:
        raise ValueError(f"--p must be in (0, 1] (top-p's probability mass), got {p}")
    if p is not None and routers:
        raise ValueError("--p sets the default list's top-p; with --routers write top_p:p=...")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    options.check_threads(threads)


def register(app: typer.Typer) -> None:
    app.command()(demo)
