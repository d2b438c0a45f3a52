"""`dynroute adaptive`: Duo-LLM (big / small / skip per token and layer): train, oracle, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dynroute.commands import options

RANK = 70

sub = typer.Typer(
    help="Adaptive computation per token and layer (Duo-LLM): big module, small module or skip.",
    no_args_is_help=True,
)

Routing = Annotated[
    str | None, typer.Option(help="random | router | big | small (default: the config's).")
]
InitFrom = Annotated[
    Path | None,
    typer.Option("--init-from", help="Start from this adaptive run's weights (routers fresh)."),
]
RoutersOnly = Annotated[
    bool | None, typer.Option("--routers-only/--all-weights", help="Train only the routers.")
]
BigShare = Annotated[
    float | None,
    typer.Option(
        "--big-share", help="Router: target share of big modules over tokens and layers (0..1)."
    ),
]
Run = Annotated[Path, typer.Argument(help="An adaptive run folder (or its model/ folder).")]
BigLayers = Annotated[
    str | None,
    typer.Option(
        "--big-layers",
        help="Budgets as numbers of big layers: --big-layers 0 1 2 4 (or 0,1,2); default 0..L.",
    ),
]
Skip = Annotated[bool, typer.Option("--skip", help="Search big/small/skip (3^L).")]
Windows = Annotated[int, typer.Option(min=1, help="Validation windows to score.")]
SeqLen = Annotated[int | None, typer.Option(help="Window length (default: the run's).")]
NumRandom = Annotated[
    int, typer.Option("--random", min=1, help="Random static patterns per budget.")
]
Context = Annotated[str, typer.Option(help="Route of the other positions: big | small | model.")]
BeamWidth = Annotated[int, typer.Option(min=1, help="Beam per budget when L > 8.")]
ReportFile = Annotated[
    Path | None, typer.Option("--out", help="Also write the full report (JSON) here.")
]
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": False}  # --big-layers 0 1 2


@sub.command("train")
@options.command
def train_cmd(
    config: options.Config,
    out: options.RunFolder,
    routing: Routing = None,
    init_from: InitFrom = None,
    routers_only: RoutersOnly = None,
    big_share: BigShare = None,
    steps: options.Steps = None,
    seed: options.Seed = None,
    threads: options.Threads = None,
    device: options.Device = None,
    progress: options.Progress = True,
) -> None:
    """Train (or resume) an adaptive model: checkpoints, resume and eval as `dynroute train`."""
    from dynroute.adaptive.training import load_adaptive_config, train_adaptive
    from dynroute.train import apply_overrides

    cfg = apply_overrides(
        load_adaptive_config(config),
        routing=routing,
        init_from=None if init_from is None else str(init_from.resolve()),
        train_routers_only=routers_only,
        budget_target=big_share,
        steps=steps, seed=seed, threads=threads, device=device,
    )  # fmt: skip
    with options.interruptible(cfg.train.threads):
        result = train_adaptive(cfg, out, progress=progress)
    if result.resumed_from:
        print(f"resumed from step {result.resumed_from}")
    if result.final is not None:
        routing = cfg.model.get("routing", "random")
        evaluation = "all big" if routing == "random" else "hard routes"
        print(options.trained(result, out) + f"  ({routing} routing; evaluation: {evaluation})")


SEARCH = ("skip", "windows", "seq_len", "num_random", "context", "beam_width")  # oracle flags


def score(ctx: typer.Context, progress: bool) -> tuple[Any, Any]:
    """Load the run of an ``oracle`` or ``report`` command and run the oracle on its
    validation windows: (LoadedModel, OracleReport).

    Reads the command's flags from ``ctx``: RUN, --big-layers (and the numbers after it),
    --seed, --threads and the search flags :data:`SEARCH`.
    """
    from rich.console import Console
    from rich.progress import track

    from dynroute.adaptive.model import AdaptiveForCausalLM
    from dynroute.adaptive.oracle import CONTEXTS, run_oracle
    from dynroute.checkpoints import load_model
    from dynroute.data import iter_eval_batches

    flags = ctx.params
    options.set_threads(flags["threads"])
    run = Path(flags["run"])
    texts = ([flags["big_layers"]] if flags["big_layers"] is not None else []) + list(ctx.args)
    try:
        ks = [int(v) for text in texts for v in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--big-layers takes integers, got {' '.join(texts)!r}") from None
    s = {name: flags[name] for name in SEARCH} | {"seed": flags["seed"] or 0}
    if s["context"] not in CONTEXTS:
        raise ValueError(f"--context must be one of {list(CONTEXTS)}, got {s['context']!r}")
    if not run.exists():
        raise FileNotFoundError(f"{run}: no such run folder")
    loaded = load_model(run)
    if not isinstance(loaded.model, AdaptiveForCausalLM):
        raise ValueError(
            f"{run} holds a {type(loaded.model).__name__}, not an adaptive model; "
            "pass a `dynroute adaptive train` run folder"
        )
    length = s.pop("seq_len") or loaded.seq_len
    windows = s.pop("windows")
    batches = list(iter_eval_batches(loaded.tokens(), 8, length, -(-windows // 8)))
    if not batches:
        raise ValueError(f"{run}: its validation text is too short for one window of {length}")
    scored = track(
        batches, description="oracle", disable=not progress, transient=True,
        console=Console(stderr=True),
    )  # fmt: skip
    return loaded, run_oracle(loaded.model, scored, budgets=ks or None, **s)


@sub.command("oracle", context_settings=EXTRA)
@options.command
def oracle_cmd(
    ctx: typer.Context,
    run: Run,
    big_layers: BigLayers = None,
    skip: Skip = False,
    json_out: options.Json = False,
    windows: Windows = 32,
    seq_len: SeqLen = None,
    num_random: NumRandom = 100,
    context: Context = "big",
    beam_width: BeamWidth = 8,
    out: ReportFile = None,
    seed: options.Seed = None,
    threads: options.Threads = None,
    progress: options.Progress = True,
) -> None:
    """Oracle loss per budget of big layers, next to random patterns and the trained router.

    Each token gets the best pattern for itself alone; every other position runs the
    context route (default: big everywhere). Exhaustive for L <= 8, beam search above.
    --json prints the list of rows.
    """

    from dynroute.common.jsonfile import write_json

    _, report = score(ctx, progress and not json_out)  # reads the other flags from ctx
    if out is not None:
        write_json(out, report.to_dict())
    if json_out:
        options.print_json(report.rows)
        return
    flag = "exhaustive" if report.method == "exhaustive" else f"BEAM (width {report.beam_width})"
    title = (f"{run}: oracle over {report.tokens:,} tokens, {flag}, "
             f"context {report.context} (loss {report.context_loss:.4f})")  # fmt: skip
    rows = [
        (str(r["budget"]), f"{r['oracle_loss']:.4f}", f"{r['random_mean_loss']:.4f}",
         f"{r['random_best_loss']:.4f}",
         "" if r["router_loss"] is None else f"{r['router_loss']:.4f}")
        for r in report.rows
    ]  # fmt: skip
    columns = ("budget", "oracle", "random mean", "random best", "router")
    options.print_table(options.table(title, columns, rows, left=0))


@sub.command("report", context_settings=EXTRA)
@options.command
def report_cmd(
    ctx: typer.Context,
    run: Run,
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html (created).")],
    big_layers: BigLayers = None,
    skip: Skip = False,
    windows: Windows = 32,
    seq_len: SeqLen = None,
    num_random: NumRandom = 100,
    context: Context = "big",
    beam_width: BeamWidth = 8,
    seed: options.Seed = None,
    threads: options.Threads = None,
    progress: options.Progress = True,
) -> None:
    """HTML report: oracle curve, oracle layers per budget, per-token difficulty.

    Difficulty of a token = its oracle loss at the lowest budget minus its lowest oracle
    loss over the budgets: how much more compute helps it. Token frequencies are counted
    on the run's training split.
    """
    import numpy as np

    from dynroute.adaptive.report import render_adaptive_report

    loaded, report = score(ctx, progress)  # reads the other flags from ctx
    try:
        counts = np.bincount(np.asarray(loaded.tokens(split="train")))
    except (FileNotFoundError, ValueError):
        counts = None  # no training split: count over the scored targets
    path = render_adaptive_report(report, out, counts, title=f"Adaptive computation: {run}")
    print(f"wrote {path} ({report.tokens:,} tokens, {report.method})")


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="adaptive")
