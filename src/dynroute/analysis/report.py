"""A self-contained HTML report (PNG figures embedded as base64) built from stats alone.

``render_report`` takes one or more stats dicts (label -> stats), so a single run and
a side-by-side comparison are the same report with one or two columns. The page is built
with :mod:`dynroute.common.html` (one stylesheet, escaping done there).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynroute.analysis.offloading import offload_section
from dynroute.analysis.plots import FIGURES
from dynroute.analysis.table import findings, layer_pattern, summary_rows
from dynroute.common.html import escape, figure, heading, note, table, write_figure, write_page
from dynroute.common.numbers import format_number

__all__ = ["REPORT_FILE", "render_report"]

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"

Runs = Mapping[str, dict[str, Any]]

NOTES = {
    "experts_hist": "How many experts each token runs (top-k: always k; top-p and null "
    "experts: varies). Left: all layers pooled; right: one row per layer.",
    "experts_per_layer": "Mean experts per token in each layer. The top-p models of "
    '"Harder Tasks Need More Experts" spent more experts in lower layers; here:',
    "difficulty": "Tokens binned into deciles of their next-token loss (left; y = experts "
    "summed over layers / number of layers) and of their router entropy (right). Spearman: "
    "rank correlation over all tokens (ties averaged; loss quantized to the bin width).",
    "load": "Tokens per expert relative to a perfectly balanced share (1.0 = balanced). "
    "CV = std / mean of tokens per expert.",
    "token_id": "For tokens seen at least {min_count} times: the share of their "
    "occurrences routed to their most common expert (1.0 = routing decided by token id "
    "alone). Black ticks: the same statistic with token ids shuffled within each batch "
    "(what a token-blind router scores).",
    "cache": "SCH: for every window of S consecutive tokens, a cache holding the window's C "
    "most-used experts serves this share of its expert uses (best possible hit rate of a "
    "C-expert cache that knows S tokens ahead). High at small C = suits expert offloading.",
    "position": "Mean experts per token and the share of assignments a per-sequence expert "
    "capacity of ceil(cf · assignments / E) would drop (served in position order) by "
    "position in the sequence.",
}
META_KEYS = ("checkpoint", "data", "split", "router", "seq_len", "num_sequences", "num_tokens")


def _fmt(x: Any, digits: int = 3) -> str:
    return format_number(x, f".{digits}f")


def _layer_rows(s: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    segs = sorted(s["cache_hit_rate"], key=int)
    header = [
        "layer",
        "experts/token",
        "ρ(experts, loss)",
        "ρ(experts, entropy)",
        "load CV",
        "max/mean",
        "token-id (shuffled)",
        *[f"SRP S={g}" for g in segs],
        "drop rate",
    ]
    rows = []
    for idx, lay in zip(s["meta"]["layer_indices"], s["layers"], strict=True):
        rows.append(
            [
                str(idx),
                _fmt(lay["mean_experts"]),
                _fmt(lay["loss"]["spearman"]),
                _fmt(lay["entropy"]["spearman"]),
                _fmt(lay["load_cv"]),
                _fmt(lay["load_max_over_mean"], 2),
                f"{_fmt(lay['token_id_consistency'])} ({_fmt(lay['token_id_baseline'])})",
                *[_fmt(lay["srp"].get(g, {}).get("f1")) for g in segs],
                _fmt(lay["drop_rate"]),
            ]
        )
    return header, rows


def _top_tokens(s: dict[str, Any]) -> str:
    """One collapsible table per layer: each expert's most frequent tokens."""
    parts = []
    for idx, lay in zip(s["meta"]["layer_indices"], s["layers"], strict=True):
        rows = [
            [
                str(e),
                "  ".join(f"{t['text']!r} ({t['share']:.0%})" for t in toks) or "–",
            ]
            for e, toks in enumerate(lay["top_tokens"])
        ]
        parts.append(
            f"<details><summary>layer {idx}</summary>"
            + table(
                ["expert", "most frequent tokens (share of the token's occurrences)"],
                rows,
                numeric=False,
            )
            + "</details>"
        )
    return "".join(parts)


def _overview(runs: Runs) -> list[str]:
    """What the numbers say per run, the summary table and what was run (meta)."""
    labels = list(runs)
    sections = []
    incomplete = [lbl for lbl, s in runs.items() if not s["meta"].get("completed", True)]
    if incomplete:
        sections.append(
            f"<p><b>Interrupted:</b> {escape(', '.join(incomplete))} did not see all "
            "the text; statistics cover the part that ran.</p>"
        )
    for label, s in runs.items():
        items = "".join(f"<li>{escape(f)}</li>" for f in findings(s))
        sections.append(heading(f"What the numbers say: {label}") + f"<ul>{items}</ul>")
    sections.append(heading("Summary") + table(["statistic", *labels], summary_rows(runs)))
    meta_rows = []
    for key in META_KEYS:
        vals = [str(s["meta"].get(key, "–")) for s in runs.values()]
        if any(v != "–" for v in vals):
            meta_rows.append([key, *vals])
    if meta_rows:
        sections.append(table(["run", *labels], meta_rows, numeric=False))
    return sections


def _figure_note(name: str, runs: Runs) -> str:
    min_count = next(iter(runs.values()))["meta"].get("min_token_count", 1)
    text = NOTES[name].format(min_count=min_count)
    if name == "experts_per_layer":  # what this data shows, never a fixed claim
        patterns = [
            f"{label}: {layer_pattern(r['experts_per_layer'], r['meta'].get('layer_indices'))}"
            for label, r in runs.items()
        ]
        text += " " + "; ".join(patterns) + "."
    return text


def _figures(runs: Runs, figdir: Path) -> list[str]:
    """Every figure of :data:`FIGURES`: written to ``figdir/<name>.png`` and embedded."""
    sections = []
    for name, (title, plot) in FIGURES.items():
        png = write_figure(plot(runs), figdir / f"{name}.png")
        sections.append(figure(png, title, _figure_note(name, runs), anchor=name))
    return sections


def _per_layer(label: str, s: dict[str, Any]) -> list[str]:
    """One run's per-layer table and its top tokens per expert."""
    header, rows = _layer_rows(s)
    min_count = s["meta"].get("min_token_count", 1)
    return [
        heading(f"Per layer: {label}") + table(header, rows),
        heading(f"Top tokens per expert: {label}", 3)
        + note(f"Tokens seen at least {min_count} times, most routed first.")
        + _top_tokens(s),
    ]


def render_report(runs: Runs, out_dir: str | Path, title: str | None = None) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/figures/*.png`` from stats dicts.

    Args:
        runs: label -> stats (as written to ``stats.json``); two labels give a
            side-by-side comparison.
        out_dir: output folder (created).
        title: page title (default: the labels).

    Returns:
        Path: the report.

    Example:
        >>> render_report({"run": stats}, "/tmp/analysis")  # doctest: +SKIP
        PosixPath('/tmp/analysis/report.html')
    """
    if not runs:
        raise ValueError("render_report: no runs given")
    out = Path(out_dir)
    title = title or "Routing analysis: " + " vs ".join(runs)
    sections = [heading(title, 1), *_overview(runs), *_figures(runs, out / FIGURES_DIR)]
    sections += offload_section(dict(runs))
    for label, s in runs.items():
        sections += _per_layer(label, s)
    return write_page(out / REPORT_FILE, title, sections)
