"""The demo and the frontier sweep as one-call recipes (``dynroute demo``, ``dynroute bench
frontier``): which router gives the lowest loss for its compute?

The demo trains top-1, top-2 and top-3 MoE language models (the top-k frontier) and
dynamic routers at matched experts per token (k̄) on the same corpus (the Python standard
library by default), steps and seed(s); evaluates every model on one held-out token set;
plots validation loss against active expert FLOPs per token and says which routers lie
below the frontier. It writes ``report.md``, ``results.json``, ``frontier.png`` and a
routing analysis of top-2 beside the best dynamic router. Finished runs are reused on a
rerun. :func:`prepare_sweep` checks the arguments of a wider sweep
(:func:`dynroute.frontier.benchmark.run_benchmark` runs it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dynroute.common.numbers import format_number
from dynroute.common.tables import print_table

__all__ = [
    "DEFAULT_CONFIG",
    "FAST_MODEL",
    "FAST_TRAIN",
    "PAPER_P",
    "base_config",
    "demo_routers",
    "find_config",
    "prepare_demo",
    "prepare_sweep",
    "results_table",
    "routing_demo",
    "run_demo",
]

DEFAULT_CONFIG = "configs/demo.toml"
PAPER_P = 0.4  # "Harder Tasks Need More Experts": top-p with p = 0.4, weights not renormalised


def demo_routers(p: float = PAPER_P) -> list[str]:
    """The demo's routers: the top-k frontier, the paper's top-p, dynamic routers at k̄ 1.5-2.

    Every name must be registered (``tests/frontier/test_demo.py`` builds each one); the
    demo refuses to start otherwise, it never skips one.

    Example:
        >>> demo_routers(0.3)[3]  # the paper-faithful top-p
        'top_p:p=0.3'
    """
    return [
        "top_k:k=1,normalize=false",  # Switch: weight = router probability
        "top_k:k=2",
        "top_k:k=3",
        f"top_p:p={p}",  # paper-faithful
        "top_p:p=0.4,normalize=true",  # renormalised: k̄ 1.55 at d_model 512 (issue 17)
        "dtop_p:target=1.5",  # controller holds k̄ at the target
        # ReLU routing: the only rule below the top-k frontier beyond seed noise in the
        # 3-seed sweep (BENCHMARKS.md section 9)
        "relu:target=1.5",
    ]


# --fast: a few-second version of the same comparison (tests, first try on a slow box).
FAST_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "num_experts": 4}
FAST_TRAIN = {
    "steps": 24,
    "batch_size": 4,
    "seq_len": 32,
    "warmup_steps": 4,
    "log_interval": 2,
    "eval_batches": 8,
    "checkpoint_interval": 8,
    "threads": 1,  # a model this small gains nothing from more
}


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
        table.add_column(
            col, justify="right" if col != "router" else "left", no_wrap=col == "router"
        )
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
            label, format_number(aux.mean_experts, ".2f"), str(int(per_token.min())),
            str(int(per_token.max())), format_number(aux.load_balance.item(), ".3f"),
            format_number(aux.dynamic.item(), ".3f"),
        )  # fmt: skip
    return table


def find_config(path: Path | None) -> Path:
    """The demo config: ``path``, else ./configs/demo.toml, else the repository's copy.

    Example:
        >>> find_config(Path("my.toml"))
        PosixPath('my.toml')
    """
    if path is not None:
        return path
    for candidate in (Path(DEFAULT_CONFIG), Path(__file__).parents[3] / DEFAULT_CONFIG):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{DEFAULT_CONFIG} not found; run from the repository root or pass --config FILE"
    )


def base_config(
    config: Path | None = None,
    data: str | None = None,
    steps: int | None = None,
    threads: int | None = None,
    fast: bool = False,
) -> Any:
    """The run config every point starts from: ``config`` (default :func:`find_config`),
    with ``fast``'s tiny model and budget and the flags applied; ``data`` as an absolute
    path (runs find it from any folder). Returns a :class:`dynroute.train.RunConfig`."""
    from dynroute.train import RunConfig, apply_overrides, load_config

    cfg = load_config(find_config(config))
    if fast:
        raw = cfg.to_dict()
        raw["model"].update(FAST_MODEL)
        raw["train"].update(FAST_TRAIN)
        raw["data"]["vocab_size"] = min(raw["data"]["vocab_size"], 512)
        cfg = RunConfig.from_dict(raw)
    if data is not None and data != "stdlib" and Path(data).exists():
        data = str(Path(data).resolve())
    return apply_overrides(cfg, data=data, steps=steps, threads=threads)


def prepare_demo(
    config: Path | None = None,
    data: str | None = None,
    p: float | None = None,
    steps: int | None = None,
    seeds: int = 1,
    fast: bool = False,
    threads: int | None = None,
    routers: list[str] | None = None,
) -> tuple[Any, list[Any], list[int]]:
    """Every check of the demo's setup, before anything is trained or written (< 1 s).

    The command checks its flags' ranges first (``dynroute demo --p 1.5`` answers before
    torch is imported); here the config, the corpus, the routers and the run settings.

    Returns:
        (RunConfig, points, seeds).

    Raises:
        ValueError / FileNotFoundError: one line naming the bad argument or file.

    Example:
        >>> prepare_demo(data="NOPE/texts")
        Traceback (most recent call last):
        ...
        FileNotFoundError: corpus NOPE/texts does not exist; pass --data with a text file or folder
    """
    from dynroute.frontier import check_frontier_config
    from dynroute.frontier.benchmark import parse_routers

    base = base_config(config, data, steps, threads, fast)
    try:
        points = parse_routers(routers or demo_routers(PAPER_P if p is None else p))
    except ValueError as err:  # a default router not registered: never skipped silently
        if routers:
            raise
        raise ValueError(
            f"the demo's default {str(err).removeprefix('--routers ')}; pass --routers "
            "to choose others"
        ) from None
    seed_list = [base.train.seed + i for i in range(seeds)]
    check_frontier_config(base, points, seed_list)
    return base, points, seed_list


def prepare_sweep(
    routers: list[str] | None,
    seeds: int,
    targets: str,
    config: Path | None = None,
    data: str | None = None,
    steps: int | None = None,
    threads: int | None = None,
) -> tuple[Any, list[Any], list[int]]:
    """Every check of ``dynroute bench frontier``'s arguments, before anything is written.

    ``routers``: sweep families (their knob at each of ``targets``, comma-separated k̄)
    or single settings; default every family of the sweep table. Returns
    ``(RunConfig, points, seeds)`` with seeds 0, 1, ...

    Example:
        >>> prepare_sweep(["top_k"], 3, "1,x")
        Traceback (most recent call last):
        ValueError: --targets 1,x: expected numbers like 1,1.5,2
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    try:
        aims = [float(t) for t in targets.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--targets {targets}: expected numbers like 1,1.5,2") from None
    if config is not None and not config.is_file():
        raise FileNotFoundError(
            f"config file {config} not found; pass --config with a TOML file such as "
            "configs/demo.toml"
        )
    from dynroute.frontier import SWEEPS, check_frontier_config
    from dynroute.frontier.benchmark import parse_routers

    base = base_config(config, data, steps, threads)
    points = parse_routers(routers or list(SWEEPS), aims)
    check_frontier_config(base, points, list(range(seeds)))
    return base, points, list(range(seeds))


def run_demo(
    out: Path,
    base: Any,
    points: list[Any],
    seed_list: list[int],
    progress: bool = True,
    console: Console | None = None,
    analysis: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Train (or reuse) the demo's runs, judge them against top-k, write the report.

    Args:
        out: output folder (``runs/demo``); rerunning reuses finished runs, resumes others.
        base, points, seed_list: what :func:`prepare_demo` returns.
        progress: per-run progress bars; console: where the runs and the table go.
        analysis: also write the side-by-side routing analysis; command: the command
            line, recorded in ``results.json``.

    Returns:
        dict: the contents of ``results.json``.
    """
    import json

    from dynroute.frontier import judge
    from dynroute.frontier.benchmark import run_benchmark

    console = console or Console()
    tokens = base.train.steps * base.train.tokens_per_step
    console.print(
        f"Training {len(points)} MoE language models x {len(seed_list)} seed(s) "
        f"({tokens:,} tokens each) on [bold]{escape(base.data.source)}[/bold] -> "
        + escape(str(out)),
        soft_wrap=True,
    )
    outcome = run_benchmark(
        base, points, seed_list, out, out / "results.json", plot=out / "frontier.png",
        title=f"dynroute demo: loss vs compute, {tokens:,} tokens per run",
        progress=progress, console=console, command=command,
    )  # fmt: skip
    records = outcome.records
    judgements = judge(records)
    link = _analysis_link(out, records, judgements, progress, console) if analysis else ""
    _write_report(out, base, seed_list, outcome, link)
    print_table(console, results_table(records, judgements, len(seed_list)))
    if outcome.reused:
        console.print(
            f"Reused {len(outcome.reused)} finished run(s): {', '.join(outcome.reused)}",
            soft_wrap=True,
            markup=False,
        )
    console.print(outcome.verdict, soft_wrap=True, markup=False)
    if outcome.training_verdict:
        console.print(
            "Counting training compute (mean k̄ over training): " + outcome.training_verdict,
            soft_wrap=True,
            markup=False,
        )
    console.print(
        f"report: {out / 'report.md'}  plot: {outcome.plot}  data: {outcome.results}  "
        f"({outcome.seconds:.0f} s)",
        soft_wrap=True,
        markup=False,
    )
    return json.loads(outcome.results.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


REPORT = """\
# dynroute demo: which router gives the lowest loss for its compute?

{setup}

{table}

{margin}

![validation loss vs active expert FLOPs per token](frontier.png)

## Verdict

{verdict}

{training}

## Routing analysis

{analysis}
"""
MARGIN = (
    "Margin: the top-k frontier's loss at the router's compute minus its loss, paired by seed "
    "(positive = below the frontier = better for its compute); ± 2 standard errors over "
    "seeds. Compute: active expert FLOPs per token = measured k̄ × MoE layers × 6·d_model·d_ff."
)
TRAINING = (
    "**Counting training compute.** The last three columns place each router by its mean "
    "k̄ over every training step instead of its final k̄ (training expert FLOPs ÷ training "
    "tokens; a static top-k has both equal, so the frontier stays where it is) and judge it "
    "again. {sentence}"
)


def _write_report(out: Path, base: Any, seeds: list[int], outcome: Any, link: str) -> None:
    """``out/report.md``: setup, table, plot, verdict and the analysis link."""
    from dynroute.common.files import atomic_write_text
    from dynroute.frontier.benchmark import describe_setup

    setup = describe_setup(base, seeds, outcome.records[0]["eval_tokens"])
    training = (
        TRAINING.format(sentence=outcome.training_verdict) if outcome.training_verdict else ""
    )
    report = REPORT.format(
        setup=setup, table=outcome.table, margin=MARGIN, verdict=outcome.verdict,
        training=training, analysis=link or "(skipped: --no-analysis)",
    )  # fmt: skip
    atomic_write_text(out / "report.md", report)


def results_table(
    records: Sequence[dict[str, Any]], judgements: Sequence[Any], seeds: int
) -> Table:
    """The terminal table of the demo: one row per router, its margin and verdict; with the
    runs' training compute, its mean k̄ over training and its verdict at that compute."""
    from dynroute.frontier import summarise
    from dynroute.frontier.training import training_judgements, training_view

    eval_tokens = records[0]["eval_tokens"]
    table = Table(
        show_edge=False,
        title=f"loss vs compute ({seeds} seed(s); validation on the same "
        f"{eval_tokens:,} tokens for every model)",
        caption="margin: frontier loss at this compute minus this loss (+ = below the "
        "top-k frontier)",
    )
    view = training_view(records)
    columns = ["router", "experts/token", "expert MFLOPs/token", "val loss", "margin", "verdict"]
    columns += ["experts/token in training", "training margin", "training verdict"] if view else []
    for col in columns:
        # names whole (never folded mid-word); headers of numbers may wrap between words
        name = col in ("router", "verdict", "training verdict")
        table.add_column(col, justify="left" if name else "right", no_wrap=name)
    verdicts = {j.summary.name: j for j in judgements}
    trained = {s.name: s for s in summarise(view)}
    trained_verdicts = {j.summary.name: j for j in training_judgements(records)}
    for s in summarise(list(records)):
        j = verdicts.get(s.name)
        cells = [
            s.label, format_number(s.mean_experts, ".2f"),
            format_number(s.expert_flops / 1e6, ".2f"), format_number(s.val_loss, ".4f"),
            *_margin_cells(j),
        ]  # fmt: skip
        if view:
            cells += [format_number(trained[s.name].mean_experts, ".2f")]
            cells += _margin_cells(trained_verdicts.get(s.name))
        table.add_row(*cells)
    return table


def _margin_cells(j: Any) -> list[str]:
    """The terminal table's margin and verdict of a point (top-k's rows: the frontier)."""
    if j is None:
        return ["—", "frontier"]
    return [format_number(j.margin, "+.3f"), j.verdict]


def _analysis_link(
    out: Path,
    records: list[dict[str, Any]],
    judgements: list[Any],
    progress: bool,
    console: Console,
) -> str:
    """``dynroute analyze --compare`` of top-2 and the best dynamic router (first seed)."""
    from dynroute.analysis import compare_report

    judged = [j for j in judgements if not math.isnan(j.margin)]
    top2 = [r for r in records if r["router"] == {"name": "top_k", "k": 2}]
    if not judged or not top2:
        return "(no dynamic router in the compute range of top-k to compare with top-2)"
    best = max(judged, key=lambda j: j.margin).summary
    seed = top2[0]["seed"]
    run = next(r for r in records if r["name"] == best.name and r["seed"] == seed)
    console.print(f"Analysing where top-2 and {best.label} spend their experts ...", markup=False)
    html = compare_report(
        top2[0]["run_dir"],
        run["run_dir"],
        out / "analysis",
        labels=("top2", best.name),
        max_tokens=None,  # each run's own evaluation set: the windows the table scored
        progress=progress,
    )
    rel = html.relative_to(out)
    return (
        f"Side-by-side routing report of top-2 and {best.label} (seed {seed}; the same "
        f"{records[0]['eval_tokens']:,} held-out tokens): experts per layer, difficulty vs "
        f"experts, load, token-id specialization, expert-cache hit rates: [{rel}]({rel}). "
        f"Re-render with `dynroute analyze --render {out / 'analysis'}`."
    )
