"""HTML report of an evaluation: a cost–quality plot and an AIQ table.

Routers are drawn as the hulls of their operating points (what λ can reach), single
models as points, the zero router as a dashed hull and the oracle as a star. The page is
built with :mod:`dynroute.common.html` (the plot embedded, so ``report.html`` is one
self-contained file; ``cost_quality.png`` is written beside it too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from dynroute.common.html import figure, heading, note, table, write_figure, write_page
from dynroute.llm.metrics import upper_hull

__all__ = ["plot_cost_quality", "write_report"]


def plot_cost_quality(result: dict[str, Any], path: str | Path) -> bytes:
    """Save the cost–quality PNG of an :func:`~dynroute.llm.evaluate.evaluate` result
    (atomically) and return its bytes."""
    base = result["baselines"]
    cmax = base["max_cost"]
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
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
    return write_figure(fig, path, dpi=120)


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.4f}"


def _router_table(result: dict[str, Any]) -> str:
    """The routers' AIQ table (best first, then the zero router) of an evaluation result;
    RouteLLM's APGR and CPT columns when the pool has two models."""
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
    return table(head, rows)


def write_report(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.html`` and ``cost_quality.png`` into ``out_dir``; return the HTML."""
    out = Path(out_dir)
    png = plot_cost_quality(result, out / "cost_quality.png")
    base, train, test = result["baselines"], result["train"], result["test"]
    oracle = base["oracle"]
    singles = [
        [s["model"], f"{s['cost']:.3g}", f"{s['quality']:.4f}"] for s in base["single_models"]
    ]
    sections = [
        heading("Routing queries among LLMs", 1),
        note(
            f"Train: {train['source']} ({train['queries']} queries); "
            f"test: {test['source']} ({test['queries']} queries). "
            "AIQ: area under the non-decreasing convex hull of (cost, quality), cost "
            "normalised by the most expensive single model (RouterBench). The zero router "
            "mixes single models."
        ),
        figure(png, "Cost–quality plot"),
        heading("Routers"),
        _router_table(result),
        note(f"Oracle: AIQ {oracle['aiq']:.4f}, quality {oracle['quality']:.4f}."),
        heading("Single models (mean cost in USD per query, mean quality)"),
        table(["model", "cost", "quality"], singles),
    ]
    return write_page(out / "report.html", "dynroute llm report", sections)
