"""Run the layer suite with progress, printing each cell's table and saving after every cell."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dynbench.cells import Cell, Record, Setup, machine_name, run_cells
from dynbench.report import (
    append_records,
    cell_table,
    done_keys,
    load_records,
    markdown_summary,
    plot_ratios,
)


def run_suite(
    cells: list[Cell],
    setup: Setup,
    out: Path | None = None,
    chart: Path | None = None,
    resume: bool = True,
    console: Console | None = None,
) -> list[Record]:
    """Measure ``cells``; with ``out``, append to (and resume from) that JSON file.

    Every finished cell is saved before the next starts, so an interrupted run loses
    at most one cell; rerunning with ``resume`` skips the cells already in ``out``.

    Returns:
        the records of this run (the file holds earlier ones too).

    Example:
        >>> from dynbench.cells import grid
        >>> recs = run_suite(grid([4], [8], ["top2"], ["fwd"]), Setup(32, 64, repeats=1),
        ...                  console=Console(quiet=True))
        >>> "grouped" in {r["impl"] for r in recs}
        True
    """
    console = console or Console()
    here = machine_name(setup.device)
    done = done_keys(load_records(out)) if out is not None and resume else set()
    todo = [
        c
        for c in cells
        if (*c.key(), setup.d_model, setup.d_ff, setup.device, setup.dtype, here) not in done
    ]
    if len(todo) < len(cells):
        console.print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already in {out}")
    new: list[Record] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("cells", total=len(todo))
        for i, records in enumerate(run_cells(todo, setup)):
            new.extend(records)
            if out is not None:
                append_records(out, records)
            progress.console.print(cell_table(records))
            progress.update(task, advance=1, description=f"cells (last: {_name(todo[i])})")
    stored = load_records(out) if out is not None else new
    everything = [r for r in stored if r.get("machine") == here]  # ratios of this machine only
    others = sorted({str(r.get("machine")) for r in stored} - {here})
    if others:
        console.print(
            f"{out} also holds {len(stored) - len(everything)} records of other machines "
            f"({'; '.join(others)}), kept as they are and left out of the tables and charts",
            markup=False,
        )
    if chart is not None and everything:
        plot_ratios(everything, chart)
        cpu_chart = chart.with_name(chart.stem + "_cpu" + chart.suffix)
        plot_ratios(everything, cpu_chart, clock="cpu")
        console.print(f"wrote {chart} and {cpu_chart}")
    if out is not None:
        console.print(f"wrote {out} ({len(everything)} records of {here})", markup=False)
    shown = new or everything
    for impl in ("grouped", "grouped_per_expert"):
        if any(r["impl"] == impl and r.get("seconds") is not None for r in shown):
            console.print(f"\n{impl}:", markup=False)
            console.print(markdown_summary(shown, impl), soft_wrap=True, markup=False)
    return new


def _name(c: Cell) -> str:
    return f"{c.router} E={c.num_experts} N={c.tokens} {c.mode}"
