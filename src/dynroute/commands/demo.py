"""`dynroute demo`: the main job — train top-2 and top-p MoE LMs of the same size, compare.

Both models see the same corpus (the Python standard library by default), seed and
token budget. The result is a table (validation loss, perplexity, experts per token,
activated-parameter ratio, tokens/s), a plot, ``report.md`` and ``results.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

DEFAULT_CONFIG = "configs/demo.toml"

# --fast: a few-second version of the same comparison (tests, first try on a slow box).
FAST_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "num_experts": 4}
FAST_TRAIN = {
    "steps": 24,
    "batch_size": 4,
    "seq_len": 32,
    "warmup_steps": 4,
    "log_interval": 2,
    "eval_interval": 8,
    "eval_batches": 2,
    "checkpoint_interval": 8,
    "threads": 1,  # a model this small gains nothing from more
}
FAST_EVAL_BATCHES = 4
FINAL_EVAL_BATCHES = 64  # 64 x 16 x 128 = 131k validation tokens, identical for both runs


def routing_demo(tokens: int = 2048, experts: int = 16, seed: int = 0) -> Table:
    """Route one random batch with each router and tabulate experts per token and losses.

    Example:
        >>> routing_demo(tokens=16, experts=4).row_count
        5
    """
    import torch

    from dynroute.layers import MoE

    torch.manual_seed(seed)
    x = torch.randn(tokens, 64)
    table = Table(title=f"{tokens} random tokens, {experts} experts, one MoE layer")
    for col in ("router", "mean experts/token", "min", "max", "load balance", "entropy"):
        table.add_column(col, justify="right" if col != "router" else "left")
    settings = [
        ("top_k", {"k": 2}),
        ("top_p", {"p": 0.4}),
        ("top_p", {"p": 0.6}),
        ("null_experts", {"k": 3, "num_null": 4}),
        ("expert_choice", {"capacity_factor": 2.0}),
    ]
    for name, kwargs in settings:
        torch.manual_seed(seed)
        moe = MoE(64, 128, experts, router=name, **kwargs)
        with torch.no_grad():
            _, aux = moe(x)
        per_token = aux.routing.experts_per_token()
        label = name + "(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
        table.add_row(
            label,
            f"{aux.mean_experts:.2f}",
            str(int(per_token.min())),
            str(int(per_token.max())),
            f"{aux.load_balance.item():.3f}",
            f"{aux.dynamic.item():.3f}",
        )
    return table


def find_config(path: Path | None) -> Path:
    """The demo config: ``path``, else ./configs/demo.toml, else the repository's copy."""
    if path is not None:
        return path
    for candidate in (Path(DEFAULT_CONFIG), Path(__file__).parents[3] / DEFAULT_CONFIG):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{DEFAULT_CONFIG} not found; run from the repository root or pass --config FILE"
    )


def run_demo(
    out: Path,
    config: Path | None = None,
    data: str | None = None,
    p: float | None = None,
    steps: int | None = None,
    seed: int | None = None,
    fast: bool = False,
    progress: bool = True,
    console: Console | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train top-2 and top-p, evaluate both, write ``report.md``, ``results.json``, a PNG.

    Args:
        out: output folder (``runs/demo``); rerunning resumes unfinished runs.
        config: TOML config (default ``configs/demo.toml``).
        data: another corpus; p: top-p threshold (default: config's);
        steps, seed, threads: override the config; fast: tiny model and budget (seconds).

    Returns:
        dict: the contents of ``results.json``.
    """
    import torch

    from dynroute.train import apply_overrides, load_config
    from dynroute.train.compare import (
        SHORT_HEADER,
        Variant,
        compare_routers,
        format_report,
        plot_curves,
        summary_row,
    )

    console = console or Console()
    raw = load_config(find_config(config)).to_dict()
    if fast:
        raw["model"].update(FAST_MODEL)
        raw["train"].update(FAST_TRAIN)
        raw["data"]["vocab_size"] = min(raw["data"]["vocab_size"], 512)
    from dynroute.train import RunConfig

    if data is not None and Path(data).exists():
        data = str(Path(data).resolve())
    base = apply_overrides(
        RunConfig.from_dict(raw), data=data, steps=steps, seed=seed, threads=threads
    )
    if base.train.threads:  # the command sets threads; dynroute.train never does
        torch.set_num_threads(base.train.threads)
    top_p = p if p is not None else float(base.model.get("p", 0.4))
    variants = [
        Variant("top2", {"router": "top_k", "k": 2}),
        Variant("top_p", {"router": "top_p", "p": top_p}),
    ]
    tokens = base.train.steps * base.train.tokens_per_step
    console.print(
        f"Training {len(variants)} MoE language models ({tokens:,} tokens each, seed "
        f"{base.train.seed}) on [bold]{base.data.source}[/bold] -> {out}"
    )
    final_batches = FAST_EVAL_BATCHES if fast else FINAL_EVAL_BATCHES
    results = compare_routers(base, variants, out, final_batches, progress=progress)

    plot = plot_curves(
        {f"{v.name}: {v.label()}": out / v.name for v in variants},
        out / "curves.png",
        title=f"top-2 vs top-p, {tokens:,} tokens each",
    )
    report = format_report(results, base, plot.name, "dynroute demo: top-2 vs top-p")
    report = report.replace(ANALYSIS_SLOT, _analysis_link(out, fast, progress, console))
    (out / "report.md").write_text(report, encoding="utf-8")
    payload = {"config": base.to_dict(), "runs": results, "plot": str(plot)}
    (out / "results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")

    table = Table(
        show_edge=False,
        title="top-2 vs top-p (same data, seed and tokens)",
        caption="experts: per token; act./expert: activated (non-embedding) / expert "
        "parameters relative to top-2",
    )
    for col in SHORT_HEADER[1:]:  # the router label names the run
        table.add_column(col, justify="left" if col == "router" else "right", no_wrap=True)
    for name, r in results.items():
        table.add_row(*summary_row(name, r)[1:])
    console.print(table)
    verdict = report.split("## Verdict\n\n", 1)[-1].split("\n", 1)[0]
    console.print(verdict)
    console.print(f"report: {out / 'report.md'}  plot: {plot}  data: {out / 'results.json'}")
    return payload


ANALYSIS_SLOT = "(`dynroute analyze` adds a link to its report here.)"


def _analysis_link(out: Path, fast: bool, progress: bool, console: Console) -> str:
    """Run ``dynroute analyze --compare`` on the two demo models; markdown linking its report."""
    from dynroute.analysis import compare_report

    console.print("Analysing where each model spends its experts ...")
    html = compare_report(
        out / "top2",
        out / "top_p",
        out / "analysis",
        labels=("top2", "top_p"),
        max_tokens=2_048 if fast else 16_384,
        progress=progress,
    )
    rel = html.relative_to(out)
    return (
        f"Side-by-side routing report (experts per layer, difficulty vs experts, load, "
        f"token-id specialization, expert-cache hit rates): [{rel}]({rel}). "
        f"Re-render with `dynroute analyze --render {out / 'analysis'}`."
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/demo"),
        config: Annotated[
            Path | None, typer.Option(help="Run config (default configs/demo.toml).")
        ] = None,
        data: Annotated[str | None, typer.Option(help="Corpus (default: stdlib).")] = None,
        p: Annotated[float | None, typer.Option(help="top-p threshold (default 0.4).")] = None,
        steps: Annotated[int | None, typer.Option(help="Training steps per model.")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed for both models.")] = None,
        fast: Annotated[bool, typer.Option("--fast", help="Tiny model, seconds.")] = False,
        threads: Annotated[
            int | None, typer.Option(help="CPU threads (1 is fastest on a busy shared machine).")
        ] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
        routing_only: Annotated[
            bool, typer.Option("--routing-only", help="Only route one random batch.")
        ] = False,
        tokens: Annotated[
            int | None, typer.Option(help="Routing table: tokens (implies --routing-only).")
        ] = None,
        experts: Annotated[
            int | None, typer.Option(help="Routing table: experts (implies --routing-only).")
        ] = None,
    ) -> None:
        """Train top-2 and top-p MoE LMs on the same data and compare quality per compute."""
        console = Console()
        if routing_only or tokens is not None or experts is not None:
            console.print(routing_demo(tokens or 2048, experts or 16, seed or 0))
            return
        try:
            run_demo(out, config, data, p, steps, seed, fast, progress, console, threads)
        except (FileNotFoundError, ValueError) as err:
            Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {err}")
            raise typer.Exit(2) from err
