"""HTML report of an evaluation: a cost–quality plot and an AIQ table.

Routers are drawn as the hulls of their operating points (what λ can reach), dotted
where AIQ extends them flat, single models as points, the zero router as a dashed hull
and the oracle as a star. The page is built with :mod:`dynroute.common.html` as the
analysis report is: the plot embedded, so ``report.html`` is one self-contained file, and
also saved as ``figures/cost_quality.png`` for slides.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from dynroute.common.html import figure, heading, note, table, write_figure, write_page
from dynroute.common.numbers import format_number
from dynroute.llm.metrics import upper_hull

__all__ = ["FIGURES_DIR", "cost_quality_figure", "plot_cost_quality", "write_report"]


FIGURES_DIR = "figures"  # as the analysis report: PNGs in a folder beside report.html

#: The router drawn as a reference, dashed on top of the others in its own colour (its
#: hull is often one point, hidden under the cheapest model without its flat line).
REFERENCE = "random"
REFERENCE_COLOR = "#d62728"  # tab:red, left out of the other routers' colours
ROUTER_COLORS = [c for c in matplotlib.colormaps["tab10"].colors if c != to_rgb(REFERENCE_COLOR)]

CAPTION = (
    "Each router's upper hull of its operating points (what λ reaches), dotted where AIQ "
    "extends it flat to the most expensive model's cost; random dashed, on top; single models "
    "as black points, the zero router (mixing them) dashed black, the oracle a star."
)


def _flat_to(h: np.ndarray, end: float) -> np.ndarray:
    """The flat segment AIQ adds after hull ``h`` ``[n, 2]`` up to cost ``end``: ``[2, 2]``
    (empty when the hull already reaches ``end``)."""
    last = h[-1]
    return np.array([last, [end, last[1]]]) if last[0] < end else np.zeros((0, 2))


def plot_cost_quality(result: dict[str, Any], path: str | Path) -> bytes:
    """Save :func:`cost_quality_figure` as the PNG ``path`` (atomically); its bytes."""
    return write_figure(cost_quality_figure(result), path, dpi=120)


def cost_quality_figure(result: dict[str, Any]) -> Figure:
    """The cost–quality plot of an :func:`~dynroute.llm.evaluate.evaluate` result. The
    legend sits right of the plot, so it hides no curve and no model."""
    base = result["baselines"]
    cmax = base["max_cost"]
    fig = Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.subplots()
    colors = itertools.cycle(ROUTER_COLORS)
    for r in result["routers"]:
        if r["router"] == "oracle":
            continue
        ref = r["router"] == REFERENCE
        color = REFERENCE_COLOR if ref else next(colors)
        style = {"color": color, "linestyle": "--" if ref else "-", "zorder": 5 if ref else 2}
        h = upper_hull([(p["cost"] / cmax, p["quality"]) for p in r["points"]])
        ax.plot(h[:, 0], h[:, 1], marker=".", label=f"{r['router']} (AIQ {r['aiq']:.3f})", **style)
        flat = _flat_to(h, 1.0)
        ax.plot(flat[:, 0], flat[:, 1], **{**style, "linestyle": "--" if ref else ":"})
    z = base["zero_router"]
    zh = np.array([(p["cost"] / cmax, p["quality"]) for p in z["points"]])
    ax.plot(zh[:, 0], zh[:, 1], "k--", label=f"zero router (AIQ {z['aiq']:.3f})")
    ax.plot(*_flat_to(zh, 1.0).T, "k:")
    _plot_single_models(ax, base["single_models"], cmax)
    o = base["oracle"]
    ax.scatter(o["cost"] / cmax, o["quality"], marker="*", s=120, color="gold", edgecolor="k",
               zorder=6, label=f"oracle (AIQ {o['aiq']:.3f})")  # fmt: skip
    ax.set_xlabel("cost (normalised by the most expensive model)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"{result['test']['source']}: {result['test']['queries']} test queries")
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return fig


def _plot_single_models(ax: Any, singles: list[dict[str, Any]], cmax: float) -> None:
    """Black points with their names; names of the dearer half point left (inside the plot)."""
    for s in singles:
        x, y = s["cost"] / cmax, s["quality"]
        ax.scatter(x, y, color="k", s=18, zorder=4)
        left = x > 0.5
        ax.annotate(s["model"], (x, y), fontsize=7, xytext=(-3 if left else 3, -9),
                    textcoords="offset points", ha="right" if left else "left")  # fmt: skip


def _fmt(x: float | None, pct: bool = False) -> str:
    return format_number(x, ".1%" if pct else ".4f")  # never "-0.0%"


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
    """Write ``report.html`` (the plot embedded) and ``figures/cost_quality.png`` into
    ``out_dir``; return the HTML's path."""
    out = Path(out_dir)
    png = plot_cost_quality(result, out / FIGURES_DIR / "cost_quality.png")
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
        figure(png, "Cost–quality plot", CAPTION),
        heading("Routers"),
        _router_table(result),
        note(f"Oracle: AIQ {oracle['aiq']:.4f}, quality {oracle['quality']:.4f}."),
        heading("Single models (mean cost in USD per query, mean quality)"),
        table(["model", "cost", "quality"], singles),
    ]
    return write_page(out / "report.html", "dynroute llm report", sections)
