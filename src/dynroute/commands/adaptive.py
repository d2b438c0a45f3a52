"""`dynroute adaptive`: Duo-LLM (big / small / skip per token and layer): train, oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

sub = typer.Typer(
    help="Adaptive computation per token and layer (Duo-LLM): big module, small module or skip.",
    no_args_is_help=True,
)


def _fail(err: Exception) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {err}")
    return typer.Exit(2)


def _score(
    run: Path,
    budget_texts: list[str],
    skip: bool,
    windows: int,
    seq_len: int | None,
    num_random: int,
    context: str,
    beam_width: int,
    seed: int,
    progress: bool,
) -> tuple[Any, Any]:
    """Load ``run`` and run the oracle on its validation windows: (LoadedModel, OracleReport)."""
    from rich.progress import track

    from dynroute.adaptive.model import AdaptiveForCausalLM
    from dynroute.adaptive.oracle import CONTEXTS, run_oracle
    from dynroute.checkpoints import load_model
    from dynroute.data import iter_eval_batches

    try:
        ks = [int(v) for text in budget_texts for v in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--budgets takes integers, got {' '.join(budget_texts)!r}") from None
    if context not in CONTEXTS:
        raise ValueError(f"--context must be one of {list(CONTEXTS)}, got {context!r}")
    if not run.exists():
        raise FileNotFoundError(f"{run}: no such run folder")
    loaded = load_model(run)
    if not isinstance(loaded.model, AdaptiveForCausalLM):
        raise ValueError(
            f"{run} holds a {type(loaded.model).__name__}, not an adaptive model; "
            "pass a `dynroute adaptive train` run folder"
        )
    length = seq_len or loaded.seq_len
    batches = list(iter_eval_batches(loaded.tokens(), 8, length, -(-windows // 8)))
    if not batches:
        raise ValueError(f"{run}: its validation text is too short for one window of {length}")
    scored = track(
        batches, description="oracle", disable=not progress, transient=True, console=_err()
    )
    report = run_oracle(
        loaded.model,
        scored,
        budgets=ks or None,
        skip=skip,
        num_random=num_random,
        context=context,
        beam_width=beam_width,
        seed=seed,
    )
    return loaded, report


def _err() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@sub.command("train")
def train_cmd(
    config: Annotated[
        Path, typer.Option("--config", help="TOML run config, e.g. configs/adaptive_tiny.toml.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Run folder; rerun the same command to resume.")
    ],
    routing: Annotated[
        str | None, typer.Option(help="random | router | big | small (default: the config's).")
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="Start from this adaptive run's weights (routers fresh)."),
    ] = None,
    routers_only: Annotated[
        bool | None,
        typer.Option("--routers-only/--all-weights", help="Train only the routers."),
    ] = None,
    budget: Annotated[
        float | None, typer.Option(help="Router: target share of big modules (0..1).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for init, data and routing.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Train (or resume) an adaptive model: checkpoints, resume and eval as `dynroute train`."""
    import torch
    from rich.console import Console

    from dynroute.adaptive.config import AdaptiveConfig
    from dynroute.adaptive.training import load_adaptive_config, train_adaptive
    from dynroute.train import RunConfig
    from dynroute.train.loop import ConfigMismatchError

    try:
        raw = load_adaptive_config(config).to_dict()
        model_flags = {
            "routing": routing,
            "init_from": None if init_from is None else str(init_from.resolve()),
            "train_routers_only": routers_only,
            "budget_target": budget,
        }
        raw["model"].update({k: v for k, v in model_flags.items() if v is not None})
        train_flags = {"steps": steps, "seed": seed, "threads": threads}
        raw["train"].update({k: v for k, v in train_flags.items() if v is not None})
        cfg = RunConfig.from_dict(raw, origin=str(config), model_config=AdaptiveConfig)
        try:  # a bad value fails here, before the run folder is made
            AdaptiveConfig(**cfg.model)
        except ValueError as err:
            raise ValueError(f"{config} [model]: {err}") from None
        if cfg.train.threads:  # a process setting: the command's, not the library's
            torch.set_num_threads(cfg.train.threads)
        result = train_adaptive(cfg, out, progress=progress)
    except (FileNotFoundError, ValueError, TypeError, ConfigMismatchError) as err:
        raise _fail(err) from err
    console = Console()
    if result.resumed_from:
        console.print(f"resumed from step {result.resumed_from}")
    if result.final is not None:
        f = result.final
        console.print(
            f"done: {result.steps} steps, {result.tokens:,} tokens -> {out}\n"
            f"val loss {f['val_loss']:.4f}  ppl {f['perplexity']:.2f}  "
            f"({cfg.model.get('routing', 'random')} routing; evaluation: "
            f"{'all big' if cfg.model.get('routing', 'random') == 'random' else 'hard routes'})"
        )


@sub.command("oracle", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def oracle_cmd(
    ctx: typer.Context,
    run: Annotated[Path, typer.Argument(help="An adaptive run folder (or its model/ folder).")],
    budgets: Annotated[
        str | None,
        typer.Option(help="Numbers of big layers: --budgets 0 1 2 4 (or 0,1,2); default 0..L."),
    ] = None,
    skip: Annotated[bool, typer.Option("--skip", help="Search big/small/skip (3^L).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON list of rows.")] = False,
    windows: Annotated[int, typer.Option(min=1, help="Validation windows to score.")] = 32,
    seq_len: Annotated[int | None, typer.Option(help="Window length (default: the run's).")] = None,
    num_random: Annotated[
        int, typer.Option("--random", min=1, help="Random static patterns per budget.")
    ] = 100,
    context: Annotated[
        str, typer.Option(help="Route of the other positions: big | small | model.")
    ] = "big",
    beam_width: Annotated[int, typer.Option(min=1, help="Beam per budget when L > 8.")] = 8,
    out: Annotated[
        Path | None, typer.Option(help="Also write the full report (JSON) here.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random patterns.")] = 0,
) -> None:
    """Oracle loss per budget of big layers, next to random patterns and the trained router.

    Each token gets the best pattern for itself alone; every other position runs the
    context route (default: big everywhere). Exhaustive for L <= 8, beam search above.
    """
    import json

    from rich.console import Console
    from rich.table import Table

    try:
        texts = ([budgets] if budgets is not None else []) + list(ctx.args)
        _, report = _score(
            run, texts, skip, windows, seq_len, num_random, context, beam_width, seed, False
        )
    except (FileNotFoundError, ValueError) as err:
        raise _fail(err) from err
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_dict(), indent=2))
    if json_out:
        print(json.dumps(report.rows))
        return
    flag = "exhaustive" if report.method == "exhaustive" else f"BEAM (width {report.beam_width})"
    table = Table(
        title=f"{run}: oracle over {report.tokens:,} tokens, {flag}, "
        f"context {report.context} (loss {report.context_loss:.4f})"
    )
    for name in ("budget", "oracle", "random mean", "random best", "router"):
        table.add_column(name, justify="right")
    for r in report.rows:
        router = "" if r["router_loss"] is None else f"{r['router_loss']:.4f}"
        table.add_row(
            str(r["budget"]),
            f"{r['oracle_loss']:.4f}",
            f"{r['random_mean_loss']:.4f}",
            f"{r['random_best_loss']:.4f}",
            router,
        )
    Console().print(table)


@sub.command("report", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def report_cmd(
    ctx: typer.Context,
    run: Annotated[Path, typer.Argument(help="An adaptive run folder (or its model/ folder).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html (created).")],
    budgets: Annotated[
        str | None,
        typer.Option(help="Numbers of big layers: --budgets 0 1 2 4 (or 0,1,2); default 0..L."),
    ] = None,
    skip: Annotated[bool, typer.Option("--skip", help="Search big/small/skip (3^L).")] = False,
    windows: Annotated[int, typer.Option(min=1, help="Validation windows to score.")] = 32,
    seq_len: Annotated[int | None, typer.Option(help="Window length (default: the run's).")] = None,
    num_random: Annotated[
        int, typer.Option("--random", min=1, help="Random static patterns per budget.")
    ] = 100,
    context: Annotated[
        str, typer.Option(help="Route of the other positions: big | small | model.")
    ] = "big",
    beam_width: Annotated[int, typer.Option(min=1, help="Beam per budget when L > 8.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random patterns.")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """HTML report: oracle curve, oracle layers per budget, per-token difficulty.

    Difficulty of a token = its oracle loss at the lowest budget minus its lowest oracle
    loss over the budgets: how much more compute helps it. Token frequencies are counted
    on the run's training split.
    """
    import numpy as np
    from rich.console import Console

    from dynroute.adaptive.report import render_adaptive_report

    try:
        texts = ([budgets] if budgets is not None else []) + list(ctx.args)
        loaded, report = _score(
            run, texts, skip, windows, seq_len, num_random, context, beam_width, seed, progress
        )
        try:
            counts = np.bincount(np.asarray(loaded.tokens(split="train")))
        except (FileNotFoundError, ValueError):
            counts = None  # no training split: count over the scored targets
        path = render_adaptive_report(report, out, counts, title=f"Adaptive computation: {run}")
    except (FileNotFoundError, ValueError, OSError) as err:
        raise _fail(err) from err
    Console().print(f"wrote {path} ({report.tokens:,} tokens, {report.method})")


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="adaptive")
