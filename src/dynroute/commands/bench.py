"""`dynroute bench`: the compute–quality frontier of routers (the layer speed suite is a script)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dynroute.commands.options import (
    Json,
    OptionalConfig,
    Progress,
    Steps,
    Threads,
    command,
    print_json,
    set_threads,
    user_errors,
)

RANK = 60

bench = typer.Typer(
    help="Benchmarks: the compute–quality frontier of routers. The MoE layer speed suite is "
    "`python benchmarks/layer.py` in a source checkout (not shipped in the wheel).",
    no_args_is_help=True,
    add_completion=False,
)

SweepRouters = Annotated[
    list[str] | None,
    typer.Option(
        help="Sweep families (top_k, top_p, top_p_normalized, null_experts, dtop_p, ...: "
        "their knob at each --targets k̄) or single MoE router settings (top_p:p=0.4); "
        "repeat or comma-separate. Default: every family of the sweep table."
    ),
]
Seeds = Annotated[int, typer.Option(help="Seeds per setting (0, 1, ...).")]
Targets = Annotated[str, typer.Option(help="k̄ the sweeps aim at, comma-separated.")]
Results = Annotated[
    Path | None,
    typer.Option(help="Results JSON (plot beside it); default OUT/frontier.json."),
]
Corpus = Annotated[str | None, typer.Option("--data", help="Corpus (default: the config's).")]


@bench.command()
@command
def frontier(
    routers: SweepRouters = None,
    seeds: Seeds = 3,
    steps: Steps = None,
    out: Annotated[Path, typer.Option(help="Folder of the run folders.")] = Path("runs/frontier"),
    results: Results = None,
    targets: Targets = "1,1.5,2,3",
    config: OptionalConfig = None,
    data: Corpus = None,
    threads: Threads = None,
    progress: Progress = True,
    json_out: Json = False,
    replot: Annotated[
        bool, typer.Option("--replot", help="Only redraw the plot from the results; train nothing.")
    ] = False,
) -> None:
    """Train router settings on the same data, steps and seeds; judge them against top-k.

    The frontier is top-k's points (k = 1, 2, 3) joined in the plane of validation loss
    vs active expert FLOPs per token (measured k̄ × MoE layers × 6·d_model·d_ff); a
    setting beats it when it lies below by more than 2 standard errors over seeds.
    Finished runs in OUT are reused, interrupted ones resumed. Config: --config (default
    configs/demo.toml); --json prints the results file.
    """
    import json

    from rich.console import Console

    if replot:
        from dynroute.frontier import replot as redraw

        print(f"plot: {redraw(results or out / 'frontier.json')}")
        return
    from dynroute.frontier.benchmark import run_benchmark
    from dynroute.frontier.demo import prepare_sweep

    base, points, seed_list = prepare_sweep(routers, seeds, targets, config, data, steps, threads)
    set_threads(base.train.threads)
    console = Console(stderr=json_out)
    console.print(
        f"Frontier: {len(points)} router settings × {seeds} seed(s) -> {out} "
        f"({base.train.steps * base.train.tokens_per_step:,} tokens per run)",
        markup=False,
    )
    resume = f"interrupted; finished runs are kept in {out}: rerun the same command to resume"
    with user_errors(interrupted=resume):
        outcome = run_benchmark(
            base, points, seed_list, out, results or out / "frontier.json",
            title=f"compute–quality frontier, {seeds} seed(s)", progress=progress,
            console=console, command="dynroute bench frontier " + " ".join(sys.argv[3:]),
        )  # fmt: skip
    if json_out:
        print_json(json.loads(outcome.results.read_text(encoding="utf-8")))
        return
    console.print(outcome.table, markup=False, soft_wrap=True)
    console.print(outcome.verdict, markup=False, soft_wrap=True)
    if outcome.training_verdict:
        console.print(outcome.training_verdict, markup=False, soft_wrap=True)
    console.print(
        f"reused {len(outcome.reused)} finished run(s); results: {outcome.results}  "
        f"plot: {outcome.plot}  ({outcome.seconds:.0f} s)",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(bench, name="bench")
