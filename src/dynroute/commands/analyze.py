"""`dynroute analyze`: where a checkpoint spends its experts (report.html + stats.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _segments(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise typer.BadParameter(
            f"expected comma-separated integers like 4,16,64, got {text!r}"
        ) from err
    if not values or min(values) < 1:
        raise typer.BadParameter(f"segment lengths must be positive integers, got {text!r}")
    return values


def _run_name(path: Path) -> str:
    """``runs/topp`` and ``runs/topp/model`` both give ``topp``."""
    path = path.resolve()
    return path.parent.name if path.name == "model" else path.name


def register(app: typer.Typer) -> None:
    @app.command()
    def analyze(
        checkpoint: Annotated[
            str | None,
            typer.Argument(
                help="`dynroute train` run folder, DynMoE save_pretrained folder, or transformers "
                "MoE checkpoint."
            ),
        ] = None,
        data: Annotated[
            str | None,
            typer.Option(help="Held-out text: file, folder or saved dataset (default: stdlib)."),
        ] = None,
        out: Annotated[
            Path | None, typer.Option(help="Output folder (default: analysis/<checkpoint name>).")
        ] = None,
        compare: Annotated[
            tuple[str, str] | None,
            typer.Option(help="Two checkpoints (or analysis folders) side by side in one report."),
        ] = None,
        render: Annotated[
            Path | None,
            typer.Option(help="Re-render DIR/report.html from DIR/stats.json (no model run)."),
        ] = None,
        split: Annotated[str, typer.Option(help="Part of --data to read.")] = "validation",
        max_tokens: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Analyse at most this many tokens (default: a dynroute run's evaluation "
                "set, the windows `dynroute train` and `dynroute eval` score; else 65,536).",
            ),
        ] = None,
        seq_len: Annotated[
            int | None, typer.Option(help="Window length (default: min(256, model max)).")
        ] = None,
        batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
        capacity_factor: Annotated[
            float, typer.Option(help="Capacity factor of the drop-by-position plot (0 = off).")
        ] = 1.25,
        segments: Annotated[
            str, typer.Option(help="Segment lengths S for the expert-cache hit rates.")
        ] = "4,16,64",
        device: Annotated[
            str | None, typer.Option(help="Run the model on this device, e.g. cuda.")
        ] = None,
    ) -> None:
        """Where a checkpoint spends its experts: report.html, stats.json, figures.

        Experts per token and per layer, difficulty vs experts, load, token-id
        specialization, expert-cache hit rates (offloading) and drops by position.
        """
        from rich.console import Console
        from rich.markup import escape

        from dynroute.analysis import (
            RecorderConfig,
            compare_report,
            findings,
            load_runs,
            render_dir,
            summary_table,
        )
        from dynroute.analysis.workflow import analyze as run_analysis

        console = Console()
        modes = sum([checkpoint is not None, compare is not None, render is not None])
        if modes != 1:
            raise typer.BadParameter(
                "give exactly one of CHECKPOINT, --compare A B, or --render DIR"
            )
        config = RecorderConfig(
            segment_lengths=_segments(segments),
            capacity_factor=capacity_factor if capacity_factor > 0 else None,
        )
        kwargs = {
            "data": data,
            "split": split,
            "max_tokens": max_tokens,
            "seq_len": seq_len,
            "batch_size": batch_size,
            "config": config,
            "device": device,
        }
        try:
            if render is not None:
                report = render_dir(render)
                runs = load_runs(render)
            elif compare is not None:
                out = out or Path("analysis") / "compare"
                report = compare_report(compare[0], compare[1], out, **kwargs)
                runs = load_runs(out)
            else:
                out = out or Path("analysis") / _run_name(Path(checkpoint))
                run_analysis(checkpoint, out, **kwargs)
                report = out / "report.html"
                runs = load_runs(out)
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(1) from err
        console.print(summary_table(runs))
        for label, stats in runs.items():
            console.print(f"[bold]{label}[/bold]")
            for line in findings(stats):
                console.print(f"  • {line}")
        console.print(f"report: [bold]{report}[/bold]  (stats: {report.parent / 'stats.json'})")
