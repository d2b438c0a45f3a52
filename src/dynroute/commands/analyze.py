"""`dynroute analyze`: where a checkpoint spends its experts (report.html + stats.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dynroute.commands import options

RANK = 30

Checkpoint = Annotated[
    str | None,
    typer.Argument(
        help="`dynroute train` run folder, DynMoE save_pretrained folder, or transformers "
        "MoE checkpoint."
    ),
]
Out = Annotated[
    Path | None, typer.Option(help="Output folder (default: analysis/<checkpoint name>).")
]
Compare = Annotated[
    tuple[str, str] | None,
    typer.Option(help="Two checkpoints (or analysis folders) side by side in one report."),
]
Render = Annotated[
    Path | None,
    typer.Option(help="Re-render DIR/report.html from DIR/stats.json (no model run)."),
]
MaxTokens = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Analyse at most this many tokens (default: a dynroute run's evaluation set, "
        "the windows `dynroute train` and `dynroute eval` score; else 65,536).",
    ),
]
SeqLen = Annotated[int | None, typer.Option(help="Window length (default: min(256, model max)).")]
CapacityFactor = Annotated[
    float, typer.Option(help="Capacity factor of the drop-by-position plot (0 = off).")
]
Segments = Annotated[str, typer.Option(help="Segment lengths S for the expert-cache hit rates.")]


def segment_lengths(text: str) -> tuple[int, ...]:
    """``--segments 4,16,64`` as integers.

    Example:
        >>> segment_lengths("4, 16,64")
        (4, 16, 64)
        >>> segment_lengths("4,x")
        Traceback (most recent call last):
        ValueError: --segments: expected comma-separated integers like 4,16,64, got '4,x'
    """
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(
            f"--segments: expected comma-separated integers like 4,16,64, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise ValueError(f"--segments: lengths must be positive integers, got {text!r}")
    return values


def run_name(path: Path) -> str:
    """``runs/topp`` and ``runs/topp/model`` both give ``topp``."""
    path = path.resolve()
    return path.parent.name if path.name == "model" else path.name


@options.command
def analyze(
    checkpoint: Checkpoint = None,
    data: options.Corpus = None,
    out: Out = None,
    compare: Compare = None,
    render: Render = None,
    split: Annotated[str, typer.Option(help="Part of --data to read.")] = "validation",
    max_tokens: MaxTokens = None,
    seq_len: SeqLen = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    capacity_factor: CapacityFactor = 1.25,
    segments: Segments = "4,16,64",
    device: options.Device = None,
    threads: options.Threads = None,
    progress: options.Progress = True,
    json_out: options.Json = False,
) -> None:
    """Where a checkpoint spends its experts: report.html, stats.json, figures.

    Experts per token and per layer, difficulty vs experts, load, token-id
    specialization, expert-cache hit rates (offloading) and drops by position.
    --json prints {"report": ..., "runs": {label: stats}}.
    """
    from rich.console import Console

    from dynroute.analysis import RecorderConfig, findings, summary_table

    if sum([checkpoint is not None, compare is not None, render is not None]) != 1:
        raise ValueError("give exactly one of CHECKPOINT, --compare A B, or --render DIR")
    if not capacity_factor >= 0:  # NaN too
        raise ValueError(f"--capacity-factor must be >= 0 (0: no drop plot), got {capacity_factor}")
    options.set_threads(threads)
    config = RecorderConfig(
        segment_lengths=segment_lengths(segments),
        capacity_factor=capacity_factor if capacity_factor > 0 else None,
    )
    settings = dict(
        data=data, split=split, max_tokens=max_tokens, seq_len=seq_len, batch_size=batch_size,
        config=config, device=device, progress=progress and not json_out,
    )  # fmt: skip
    report, runs = run_analysis(checkpoint, compare, render, out, settings)
    if json_out:
        options.print_json({"report": str(report), "runs": runs})
        return
    console = Console()
    options.print_table(summary_table(runs), console)
    for label, stats in runs.items():
        console.print(label, style="bold", markup=False)
        for line in findings(stats):
            console.print(f"  • {line}", markup=False)
    console.print(f"report: {report}  (stats: {report.parent / 'stats.json'})", markup=False)


def run_analysis(
    checkpoint: str | None,
    compare: tuple[str, str] | None,
    render: Path | None,
    out: Path | None,
    settings: dict[str, Any],
) -> tuple[Path, dict[str, Any]]:
    """(report.html, label -> stats) of one of the three modes."""
    from dynroute.analysis import compare_report, load_runs, render_dir
    from dynroute.analysis.workflow import analyze as analyze_checkpoint

    if render is not None:
        return render_dir(render), load_runs(render)
    if compare is not None:
        out = out or Path("analysis") / "compare"
        return compare_report(compare[0], compare[1], out, **settings), load_runs(out)
    assert checkpoint is not None
    out = out or Path("analysis") / run_name(Path(checkpoint))
    analyze_checkpoint(checkpoint, out, **settings)
    return out / "report.html", load_runs(out)


def register(app: typer.Typer) -> None:
    app.command()(analyze)
