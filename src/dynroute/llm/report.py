"""HTML report of an evaluation: a cost–quality plot and an AIQ table.

Routers are drawn as the hulls of their operating points (what λ can reach), single
models as points, the zero router as a dashed hull and the oracle as a star.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from dynroute.llm.metrics import upper_hull

__all__ = ["plot_cost_quality", "write_report"]


def plot_cost_quality(result: dict[str, Any], path: str | Path) -> Path:
    """Save the cost–quality PNG of an :func:`~dynroute.llm.evaluate.evaluate` result."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    base = result["baselines"]
    cmax = base["max_cost"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in result["routers"]:
        if r["router"] == "oracle":
            continue
        h = upper_hull([(p["cost"] / cmax, p["quality"]) for p in r["points"]])
        ax.plot(h[:, 0], h[:, 1], marker=".", label=f"{r['router']} (AIQ {r['aiq']:.3f})")
    z = base["zero_router"]
    ax.plot(
        [p["cost"] / cmax for p in z["points"]],
        [p["quality"] for p in z["points"]],
        "k--",
        label=f"zero router (AIQ {z['aiq']:.3f})",
    )
    for s in base["single_models"]:
        ax.scatter(s["cost"] / cmax, s["quality"], color="k", s=18, zorder=3)
        ax.annotate(
            s["model"],
            (s["cost"] / cmax, s["quality"]),
            fontsize=7,
            xytext=(3, -8),
            textcoords="offset points",
        )
    o = base["oracle"]
    ax.scatter(
        o["cost"] / cmax,
        o["quality"],
        marker="*",
        s=120,
        color="gold",
        edgecolor="k",
        zorder=4,
        label=f"oracle (AIQ {o['aiq']:.3f})",
    )
    ax.set_xlabel("cost (normalised by the most expensive model)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"{result['test']['source']}: {result['test']['queries']} test queries")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.4f}"


def write_report(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.html`` and ``cost_quality.png`` into ``out_dir``; return the HTML."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_cost_quality(result, out / "cost_quality.png")
    base = result["baselines"]
    two = len(result["models"]) == 2
    head = [
        "router",
        "AIQ",
        "oracle gap",
        "beats zero router",
        "best quality",
        "cost saved at best single",
    ] + (["APGR", "CPT(50%)", "CPT(80%)"] if two else [])
    rows = []
    for r in sorted(result["routers"], key=lambda r: -r["aiq"]):
        cells = [
            r["router"],
            _fmt(r["aiq"]),
            _fmt(r["oracle_gap"]),
            "yes" if r["beats_zero_router"] else "no",
            _fmt(r["best_quality"]),
            _fmt(r["cost_saved_at_best_single"], pct=True),
        ]
        if two:
            cells += [
                _fmt(r.get("apgr")),
                _fmt(r.get("cpt50"), pct=True),
                _fmt(r.get("cpt80"), pct=True),
            ]
        rows.append(cells)
    rows.append(
        ["zero router", _fmt(base["zero_router"]["aiq"]), "", "", "", ""]
        + ([""] * 3 if two else [])
    )
    table = (
        "<tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>\n"
        + "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
    )
    singles = "\n".join(
        f"<tr><td>{html.escape(s['model'])}</td><td>{s['cost']:.3g}</td>"
        f"<td>{s['quality']:.4f}</td></tr>"
        for s in base["single_models"]
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>dynroute llm report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25em .6em}}</style>
</head><body>
<h1>Routing queries among LLMs</h1>
<p>Train: {html.escape(result["train"]["source"])} ({result["train"]["queries"]} queries);
test: {html.escape(result["test"]["source"])} ({result["test"]["queries"]} queries).
AIQ: area under the non-decreasing convex hull of (cost, quality), cost normalised by the
most expensive single model (RouterBench). The zero router mixes single models.</p>
<img src="cost_quality.png" alt="cost-quality plot">
<h2>Routers</h2><table>{table}</table>
<p>Oracle: AIQ {base["oracle"]["aiq"]:.4f}, quality {base["oracle"]["quality"]:.4f}.</p>
<h2>Single models (mean cost in USD per query, mean quality)</h2>
<table><tr><th>model</th><th>cost</th><th>quality</th></tr>{singles}</table>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
