"""One frontier run end to end: check, train every (point, seed), judge, write the results.

Shared by ``dynroute bench frontier``, ``benchmarks/frontier.py`` and ``dynroute demo``:
validates everything before the first step (< 1 s), trains or reuses the runs, then
writes ``<results>.json`` (every run, the summaries, the verdicts), ``<results>.png``
(the plot) and returns the markdown table and the verdict sentence.

Example:
    >>> points = parse_routers(["top_k", "top_p:p=0.4,normalize=true", "null_experts"], [2])
    >>> [p.label for p in points]  # doctest: +NORMALIZE_WHITESPACE
    ['top_k(k=1, normalize=False)', 'top_k(k=2)', 'top_k(k=3)', 'top_p(p=0.4, normalize=True)',
     'null_experts(k=3, num_null=4)']
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from dynroute.common.jsonfile import write_json
from dynroute.frontier.plot import DEFAULT_TITLE, plot_frontier
from dynroute.frontier.report import markdown_table
from dynroute.frontier.runs import run_frontier
from dynroute.frontier.sweep import FRONTIER_FAMILY, TARGETS, Point, point_from_text, sweep_points
from dynroute.frontier.training import training_judgements, training_sentence, training_view
from dynroute.frontier.verdict import NOISE_SE, Judgement, judge, summarise, verdict_sentence
from dynroute.train.config import RunConfig

__all__ = ["FrontierOutcome", "describe_setup", "parse_routers", "run_benchmark"]


def parse_routers(items: Iterable[str], targets: Iterable[float] = TARGETS) -> list[Point]:
    """Points from a mix of sweep families (``top_p_normalized``: its sweep at ``targets``)
    and single router settings (``top_p:p=0.4``); items may also be comma-separated.
    ``top_k`` always gives every top-k setting of the sweep table (the whole frontier).

    Raises:
        ValueError: an unknown family or router, or a bad argument (one line).
    """
    targets = list(targets)
    points: list[Point] = []
    for item in (s.strip() for text in items for s in _split(text)):
        if not item:
            continue
        try:
            if ":" in item:
                points.append(point_from_text(item))
            else:  # the frontier always spans all of top-k's settings
                points += sweep_points([item], TARGETS if item == FRONTIER_FAMILY else targets)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--routers {item}: {err}") from None
    return points


def _split(text: str) -> list[str]:
    # "top_k,top_p:p=0.4,normalize=true": a comma starts a new item only before a name
    parts: list[str] = []
    for piece in text.split(","):
        if parts and "=" in piece and ":" not in piece:
            parts[-1] += "," + piece  # another key=value of the previous router
        else:
            parts.append(piece)
    return parts


def describe_setup(base: RunConfig, seeds: Sequence[int], eval_tokens: int | None = None) -> str:
    """One paragraph: model, data, tokens per run, seeds, evaluation set (``eval_tokens``:
    the measured count, when the held-out split is shorter than the windows asked for).

    Example:
        >>> describe_setup(RunConfig(), [0, 1]).split(";")[0]
        'Corpus `stdlib` (vocab 4096)'
    """
    m, t, d = base.model, base.train, base.data
    if eval_tokens is None:
        eval_tokens = (t.eval_batches or 0) * t.tokens_per_step
    return (
        f"Corpus `{d.source}` (vocab {d.vocab_size}); d_model {m.get('d_model')}, "
        f"{m.get('n_layers')} layers, {m.get('num_experts')} SwiGLU experts of width "
        f"{m.get('d_ff')} per MoE layer (every {m.get('moe_every', 1)} layer(s)), "
        f"layout {m.get('expert_layout', 'stacked')}; {t.steps} steps × {t.tokens_per_step:,} "
        f"= {t.steps * t.tokens_per_step:,} training tokens per run; seeds "
        f"{', '.join(map(str, seeds))}; every run evaluated on the same "
        f"{eval_tokens:,} held-out tokens ({t.eval_batches} batches of {t.batch_size}×{t.seq_len} "
        "windows evenly spaced over the validation split)."
    )


@dataclass
class FrontierOutcome:
    """What a frontier run produced."""

    records: list[dict[str, Any]]
    table: str
    verdict: str
    plot: Path
    training_verdict: str  # each router in both views ("" when not recorded)
    results: Path
    reused: list[str]
    seconds: float


def run_benchmark(
    base: RunConfig,
    points: Sequence[Point],
    seeds: Sequence[int],
    out: Path | str,
    results: Path | str,
    title: str = "",
    progress: bool = True,
    console: Console | None = None,
    command: str = "",
    plot: Path | str | None = None,
) -> FrontierOutcome:
    """Train (or reuse) every run, then write ``results`` (.json) and the plot (default:
    ``results`` with a ``.png`` suffix).

    The JSON is rewritten after every run, so an interrupted sweep keeps what it finished.
    """
    console = console or Console(stderr=True)
    started = time.perf_counter()
    results = Path(results)
    plot = Path(plot) if plot is not None else results.with_suffix(".png")
    done: list[dict[str, Any]] = []

    def save(summary: dict[str, Any] | None = None) -> None:
        payload = {
            "command": command,
            "title": title or DEFAULT_TITLE,  # the plot's, for replot
            "setup": describe_setup(base, seeds, done[0]["eval_tokens"] if done else None),
            "config": base.to_dict(),
            "seeds": list(seeds),
            "flops_formula": "sum over MoE layers of measured k̄_l × 6·d_model·d_ff",
            "training_flops_formula": "the same with k̄_l averaged over every training step "
            "(training expert FLOPs / training tokens)",
            "noise_rule": f"below/above when |mean paired margin| > {NOISE_SE} standard errors",
            "machine": platform.platform(),
            "runs": done,
            **(summary or {}),
        }
        write_json(results, payload)  # NaN (one seed: no spread) as null: strict JSON

    def keep(rec: dict[str, Any]) -> None:
        done.append(rec)
        save()

    records = run_frontier(base, points, seeds, out, progress, console, on_run=keep)
    judgements = judge(records)
    verdict = verdict_sentence(judgements)
    training = training_sentence(records)
    table = markdown_table(records)
    plot_frontier(records, plot, title=title)
    seconds = time.perf_counter() - started
    save(
        {
            "summaries": [asdict(s) for s in summarise(records)],
            "judgements": [judgement_row(j) for j in judgements],
            "verdict": verdict,
            **training_results(records),
            "training_verdict": training,
            "table": table,
            "plot": plot.name if plot.parent == results.parent else str(plot),
            "wall_seconds": seconds,
        }
    )
    reused = [f"{r['name']}-s{r['seed']}" for r in records if r["reused"]]
    return FrontierOutcome(records, table, verdict, plot, training, results, reused, seconds)


def training_results(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The training-compute view as ``results.json`` keeps it: summaries, verdicts and the
    whole-view sentence (:func:`~dynroute.frontier.verdict.verdict_sentence`)."""
    view = training_view(records)
    if not view:
        return {}
    judgements = training_judgements(records)
    return {
        "training_summaries": [asdict(s) for s in summarise(view)],
        "training_judgements": [judgement_row(j) for j in judgements],
        "training_view_verdict": verdict_sentence(judgements),
    }


def judgement_row(j: Judgement) -> dict[str, Any]:
    """One verdict as ``results.json`` keeps it."""
    return {"name": j.summary.name, "label": j.summary.label, "margins": list(j.margins),
            "margin": j.margin, "margin_se": j.margin_se, "verdict": j.verdict}  # fmt: skip
