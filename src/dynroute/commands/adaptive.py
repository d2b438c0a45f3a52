"""`dynroute adaptive`: Duo-LLM (big / small / skip per token and layer): train, oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

sub = typer.Typer(
    help="Adaptive computation per token and layer (Duo-LLM): big module, small module or skip.",
    no_args_is_help=True,
)


def _fail(err: Exception) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {err}")
    return typer.Exit(2)


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


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="adaptive")
