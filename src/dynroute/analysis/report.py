"""A self-contained HTML report (PNG figures embedded as base64) built from stats alone.

``render_report`` takes one or more stats dicts (label -> stats), so a single run and
a side-by-side comparison are the same report with one or two columns.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynroute.analysis.plots import FIGURES
from dynroute.analysis.table import findings, layer_pattern, summary_rows

__all__ = ["REPORT_FILE", "render_report"]

REPORT_FILE = "report.html"

CSS = """
body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%}code{background:#f3f3f3;padding:0 3px}.note{color:#555;max-width:70em}
details{margin:.3em 0}summary{cursor:pointer}
"""

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


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _table(header: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """An HTML table; columns after the first are right-aligned numbers if ``numeric``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if i and numeric else ""}">{html.escape(str(c))}</td>'
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


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
            + _table(
                ["expert", "most frequent tokens (share of the token's occurrences)"],
                rows,
                numeric=False,
            )
            + "</details>"
        )
    return "".join(parts)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
    os.replace(tmp, path)


def write_page(out: Path, title: str, sections: list[str]) -> Path:
    """Write ``out/report.html``: one self-contained page (our CSS, the given HTML sections),
    atomically; returns its path."""
    doc = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>"
    )
    path = out / REPORT_FILE
    _atomic_write(path, doc.encode("utf-8"))
    return path


def render_report(
    runs: Mapping[str, dict[str, Any]], out_dir: str | Path, title: str | None = None
) -> Path:
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
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    labels = list(runs)
    title = title or "Routing analysis: " + " vs ".join(labels)
    sections = [f"<h1>{html.escape(title)}</h1>"]
    meta_rows = []
    for key in ("checkpoint", "data", "split", "router", "seq_len", "num_sequences", "num_tokens"):
        vals = [str(s["meta"].get(key, "–")) for s in runs.values()]
        if any(v != "–" for v in vals):
            meta_rows.append([key, *vals])
    incomplete = [lbl for lbl, s in runs.items() if not s["meta"].get("completed", True)]
    if incomplete:
        sections.append(
            f"<p><b>Interrupted:</b> {html.escape(', '.join(incomplete))} did not see all "
            "the text; statistics cover the part that ran.</p>"
        )
    for label, s in runs.items():
        items = "".join(f"<li>{html.escape(f)}</li>" for f in findings(s))
        sections.append(f"<h2>What the numbers say: {html.escape(label)}</h2><ul>{items}</ul>")
    sections.append("<h2>Summary</h2>" + _table(["statistic", *labels], summary_rows(runs)))
    if meta_rows:
        sections.append(_table(["run", *labels], meta_rows, numeric=False))
    min_count = next(iter(runs.values()))["meta"].get("min_token_count", 1)
    for name, (heading, plot) in FIGURES.items():
        png = _png(plot(runs))
        _atomic_write(figdir / f"{name}.png", png)
        b64 = base64.b64encode(png).decode("ascii")
        note = NOTES[name].format(min_count=min_count)
        if name == "experts_per_layer":  # what this data shows, never a fixed claim
            patterns = [
                f"{label}: {layer_pattern(r['experts_per_layer'], r['meta'].get('layer_indices'))}"
                for label, r in runs.items()
            ]
            note += " " + "; ".join(patterns) + "."
        sections.append(
            f'<h2 id="{name}">{html.escape(heading)}</h2>'
            f'<p class="note">{html.escape(note)}</p>'
            f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{b64}">'
        )
    for label, s in runs.items():
        header, rows = _layer_rows(s)
        sections.append(f"<h2>Per layer: {html.escape(label)}</h2>" + _table(header, rows))
        min_count = s["meta"].get("min_token_count", 1)
        sections.append(
            f"<h3>Top tokens per expert: {html.escape(label)}</h3>"
            f'<p class="note">Tokens seen at least {min_count} times, most routed first.</p>'
            + _top_tokens(s)
        )
    return write_page(out, title, sections)
