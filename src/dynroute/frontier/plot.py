"""The frontier plot: one small panel per router family against the top-k frontier.

Every panel shares both axes (validation loss vs active expert FLOPs per token) and draws
the top-k frontier in black, so a family's points read directly against it; each point's
marker says its verdict (below / on / above the frontier beyond seed noise, one seed,
outside top-k's compute range). A point is labelled with the setting that varies within
its family (``p=0.4``; the settings they share are in the panel title) where the label
fits without covering another label, point or the panel's edge, and left unlabelled
otherwise. A router whose mean k̄ over training differs from its final k̄ (the
training-compute view, :mod:`~dynroute.frontier.training`) gets a dotted line from its
point to its training expert compute, ending in a small marker with its verdict there.
:func:`replot` redraws the plot of a finished run from its results JSON,
without training anything.

Example:
    >>> from dynroute.frontier.verdict import record
    >>> recs = [record("top_k", f"k{k}", f"top_k(k={k})", 0, 3.2 - 0.2 * k, k, k)
    ...         for k in (1, 2)] + [record("top_p", "p", "top_p(p=0.4)", 0, 2.9, 1.5, 1.5)]
    >>> fig = frontier_figure(recs)
    >>> [ax.get_title() for ax in fig.axes if ax.get_visible()]
    ['top_p']
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dynroute.frontier.training import SAME_COMPUTE, training_judgements, training_view
from dynroute.frontier.verdict import Judgement, Summary, judge, summarise

__all__ = ["DEFAULT_TITLE", "VERDICT_STYLES", "frontier_figure", "plot_frontier", "replot"]

DEFAULT_TITLE = "compute–quality frontier"
XLABEL = "active expert MFLOPs per token (measured mean k × MoE layers × 6·d_model·d_ff)"
PANEL_COLUMNS = 4  # panels per row
PANEL_SIZE = (3.7, 2.9)  # inches per panel
LABEL_SIZE = 7  # points
FRONTIER_LABEL = "#555555"  # colour of the frontier's k labels (italic)
TRAINING_TEXT = "to the mean k̄ over training (small marker: verdict there)"


@dataclass(frozen=True)
class VerdictStyle:
    """How a verdict is drawn: marker shape, colour, filled or hollow, legend text."""

    marker: str
    color: str
    filled: bool
    text: str


#: Marker of each verdict (``one seed`` splits by the sign of its margin).
VERDICT_STYLES: dict[str, VerdictStyle] = {
    "below": VerdictStyle("v", "#1a9850", True, "below the frontier (beyond 2 SE)"),
    "on": VerdictStyle("o", "#4575b4", True, "on it (within noise)"),
    "above": VerdictStyle("^", "#d73027", True, "above it (beyond 2 SE)"),
    "one seed, below": VerdictStyle("v", "#1a9850", False, "below, one seed (no noise estimate)"),
    "one seed, above": VerdictStyle("^", "#d73027", False, "above, one seed (no noise estimate)"),
    "outside": VerdictStyle("s", "#7f7f7f", False, "outside top-k's compute range"),
}


def _style_key(j: Judgement | None) -> str:
    if j is None:
        return "outside"
    if j.verdict == "one seed":
        return "one seed, below" if j.margin > 0 else "one seed, above"
    return j.verdict if j.verdict in VERDICT_STYLES else "outside"


def _params(label: str) -> list[str]:
    """``top_p(p=0.4, normalize=True)`` -> ``['p=0.4', 'normalize=True']``."""
    inside = label[label.find("(") + 1 : label.rfind(")")] if "(" in label else ""
    return [p.strip() for p in re.split(r",\s*(?=[A-Za-z_][A-Za-z0-9_]*=)", inside) if p.strip()]


def _short_labels(points: Sequence[Summary]) -> tuple[list[str], list[str]]:
    """Per point the settings that vary within its family (``default``: none), and the
    settings all its points share (those the family's name holds count as shared).

    Example:
        >>> s = [Summary("top_p(normalize=True)", "", label, (0,), *[0.0] * 6)
        ...      for label in ("top_p(p=0.4, normalize=True)", "top_p(p=0.6, normalize=True)")]
        >>> _short_labels(s)
        (['p=0.4', 'p=0.6'], ['normalize=True'])
    """
    params = [_params(s.label) for s in points]
    named = _params(points[0].family) if points else []
    common = [p for p in params[0] if all(p in ps for ps in params)] if len(params) > 1 else []
    shared = list(dict.fromkeys(named + common))
    short = [", ".join(p for p in ps if p not in shared) or "default" for ps in params]
    return short, shared


def _or0(std: float) -> float:
    return 0.0 if math.isnan(std) else std


def _limits(summaries: Sequence[Summary], unit: float) -> tuple[tuple[float, float], ...]:
    """Shared x and y limits: every point with its error bars, 6 % padding."""
    xs = [
        (s.expert_flops - _or0(s.expert_flops_std), s.expert_flops + _or0(s.expert_flops_std))
        for s in summaries
    ]
    ys = [(s.val_loss - _or0(s.val_loss_std), s.val_loss + _or0(s.val_loss_std)) for s in summaries]
    out = []
    for pairs, scale in ((xs, unit), (ys, 1.0)):
        lo = min(p[0] for p in pairs) / scale
        hi = max(p[1] for p in pairs) / scale
        pad = 0.06 * (hi - lo) or 0.05 * abs(hi) or 1.0
        out.append((lo - pad, hi + pad))
    return tuple(out)


def _draw_points(
    ax: Any, pts: Sequence[Summary], unit: float, frontier: bool, judged: dict[str, Judgement]
) -> list[tuple[float, float]]:
    """Error bars, the joining line and the markers of ``pts`` (sorted by compute)."""
    x = [s.expert_flops / unit for s in pts]
    y = [s.val_loss for s in pts]
    ax.errorbar(
        x,
        y,
        xerr=[_or0(s.expert_flops_std) / unit for s in pts],
        yerr=[_or0(s.val_loss_std) for s in pts],
        fmt="none",
        ecolor="#bbbbbb" if not frontier else "#555555",
        elinewidth=0.8,
        capsize=2,
        zorder=2,
    )
    ax.plot(
        x,
        y,
        "-" if frontier else "--",
        color="black" if frontier else "#888888",
        lw=1.8 if frontier else 1.0,
        zorder=3,
    )
    for s, xi, yi in zip(pts, x, y, strict=True):
        if frontier:
            ax.plot(xi, yi, "o", color="black", ms=4.5, zorder=4)
            continue
        st = VERDICT_STYLES[_style_key(judged.get(s.name))]
        ax.plot(
            xi,
            yi,
            st.marker,
            ms=7,
            mec=st.color,
            mew=1.4,
            mfc=st.color if st.filled else "white",
            zorder=5,
        )
    return list(zip(x, y, strict=True))


# Where a label may go around its point: offset (points), horizontal, vertical alignment;
# the near ring first, then a farther one (with a leader line: it could seem to name a
# neighbour).
_SPOTS = tuple(
    ((dx * r, dy * r), ha, va)
    for r in (1.0, 1.6)
    for (dx, dy), ha, va in (
        ((5, 4), "left", "bottom"), ((5, -4), "left", "top"), ((-5, 4), "right", "bottom"),
        ((-5, -4), "right", "top"), ((0, 7), "center", "bottom"), ((0, -7), "center", "top"),
        ((7, 0), "left", "center"), ((-7, 0), "right", "center"),
    )
)  # fmt: skip
_NEAR = len(_SPOTS) // 2
LEADER = {"arrowstyle": "-", "color": "#999999", "lw": 0.6, "shrinkA": 0.0, "shrinkB": 4.0}


def _place_label(
    ax: Any, renderer: Any, text: str, xy: tuple[float, float], taken: list[Any], color: str
) -> bool:
    """Put ``text`` at the first spot around ``xy`` that stays inside the axes and clear of
    ``taken`` (display boxes ``[n, 4]`` of labels, markers, lines); no spot: no label."""
    frame = ax.get_window_extent(renderer)
    boxes = np.concatenate(taken)
    style = {"fontsize": LABEL_SIZE, "color": color, "zorder": 6,
             "style": "italic" if color == FRONTIER_LABEL else "normal"}  # fmt: skip
    for i, (offset, ha, va) in enumerate(_SPOTS):
        t = ax.annotate(text, xy, xytext=offset, textcoords="offset points", ha=ha, va=va, **style)
        box = t.get_window_extent(renderer).expanded(1.04, 1.08)
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= box.y1
        clear = not np.any(
            (boxes[:, 0] < box.x1) & (box.x0 < boxes[:, 2])
            & (boxes[:, 1] < box.y1) & (box.y0 < boxes[:, 3])
        )  # fmt: skip
        if inside and box.y1 <= frame.y1 and clear:
            taken.append(np.array([[box.x0, box.y0, box.x1, box.y1]]))
            if i >= _NEAR:  # the far ring: a leader line says which point it names
                t.remove()
                ax.annotate(text, xy, xytext=offset, textcoords="offset points", ha=ha, va=va,
                            arrowprops=LEADER, **style)  # fmt: skip
            return True
        t.remove()
    return False


def _obstacles(ax: Any, points: Sequence[tuple[float, float]], radius: float) -> np.ndarray:
    """Display boxes ``[n, 4]`` a label must not cover: a square of half-size ``radius``
    around every point and small ones every few pixels along every drawn line and error
    bar (their caps excepted)."""
    to_px = ax.transData.transform
    lines = [
        to_px(np.asarray(line.get_xydata(), dtype=float))
        for line in ax.get_lines()
        if line.get_linestyle() not in ("None", "none", "", " ")  # caps: markers only
    ]
    for bars in ax.collections:  # error bars: one two-point segment each
        lines += [to_px(np.asarray(seg, dtype=float)) for seg in bars.get_segments()]
    dots = [np.zeros((0, 2))]
    step = 3.0  # pixels between samples along a line
    for seg in lines:
        for p0, p1 in itertools.pairwise(seg):
            n = max(2, int(np.hypot(*(p1 - p0)) / step) + 1)
            dots.append(p0 + np.linspace(0.0, 1.0, n)[:, None] * (p1 - p0))
    marks = np.asarray(to_px(points), dtype=float).reshape(-1, 2)
    along = np.concatenate(dots)
    r = 1.0  # half the width of a line sample
    return np.concatenate([np.hstack([marks - radius, marks + radius]),
                           np.hstack([along - r, along + r])])  # fmt: skip


@dataclass(frozen=True)
class _TrainingView:
    """The training-compute view of every point (empty: the runs did not record it)."""

    summaries: dict[str, Summary]
    judged: dict[str, Judgement]

    def moved(self, s: Summary) -> Summary | None:
        """``s`` in the training view when its compute there differs beyond SAME_COMPUTE."""
        t = self.summaries.get(s.name)
        if t is None or abs(t.expert_flops / s.expert_flops - 1.0) <= SAME_COMPUTE:
            return None
        return t


def _draw_training(ax: Any, family: Sequence[Summary], view: _TrainingView, unit: float) -> None:
    """A dotted line from each point that moved to its training compute, and a small
    marker there with its verdict in that view."""
    for s in family:
        t = view.moved(s)
        if t is None:
            continue
        st = VERDICT_STYLES[_style_key(view.judged.get(s.name))]
        x0, x1 = s.expert_flops / unit, t.expert_flops / unit
        ax.plot([x0, x1], [s.val_loss] * 2, ":", color=st.color, lw=1.0, zorder=4)
        ax.plot(x1, s.val_loss, st.marker, ms=4.5, mec=st.color, mew=1.0,
                mfc=st.color if st.filled else "white", zorder=5)  # fmt: skip


def _panel(
    ax: Any,
    family: Sequence[Summary],
    top_k: Sequence[Summary],
    judged: dict[str, Judgement],
    unit: float,
    view: _TrainingView,
) -> list[tuple[str, Any, str]]:
    """One family against the frontier; returns the labels to place, frontier's first:
    (text, data point, colour)."""
    front_xy = _draw_points(ax, top_k, unit, True, judged)
    own_xy = _draw_points(ax, family, unit, False, judged) if family else []
    _draw_training(ax, family, view, unit)
    short, shared = _short_labels(family) if family else ([], [])
    ks, _ = _short_labels(top_k)
    name = family[0].family if family else "top_k"
    extra = [p for p in shared if p not in _params(name)]
    ax.set_title(name + (f" ({', '.join(extra)})" if extra else ""), fontsize=9)
    ax.grid(alpha=0.3)
    # the frontier's k in grey italics, the family's settings in black: never confused
    return [(t.split(",")[0], xy, FRONTIER_LABEL) for t, xy in zip(ks, front_xy, strict=True)] + [
        (t, xy, "black") for t, xy in zip(short, own_xy, strict=True)
    ]


def _label_panel(ax: Any, renderer: Any, labels: Sequence[tuple[str, Any, str]]) -> None:
    """Every label that fits, in order, clear of the markers and of each other."""
    radius = 4.0 * ax.figure.dpi / 72  # a marker's half size (3.5 pt) and its edge, in pixels
    taken = [_obstacles(ax, [xy for _, xy, _ in labels], radius)]
    for text, xy, color in labels:
        _place_label(ax, renderer, text, xy, taken, color)


def frontier_figure(
    records: Sequence[dict[str, Any]], title: str = "", flops_unit: float = 1e6
) -> Figure:
    """The small multiples of :mod:`this module <dynroute.frontier.plot>` as a Figure.

    Args:
        records: one :func:`~dynroute.frontier.verdict.record` per run (every seed).
        title: the figure's title (default :data:`DEFAULT_TITLE`).
        flops_unit: FLOPs per unit of the x axis (1e6: MFLOPs).
    """
    summaries = summarise(records)
    top_k = sorted((s for s in summaries if s.is_frontier), key=lambda s: s.expert_flops)
    judged = {j.summary.name: j for j in judge(records)} if len(top_k) >= 2 else {}
    view = _TrainingView(
        {s.name: s for s in summarise(training_view(records))},
        {j.summary.name: j for j in training_judgements(records)} if len(top_k) >= 2 else {},
    )
    names = list(dict.fromkeys(s.family for s in summaries if not s.is_frontier))
    groups = [
        sorted((s for s in summaries if s.family == f), key=lambda s: s.expert_flops) for f in names
    ] or [[]]
    cols = min(len(groups), PANEL_COLUMNS)
    rows = -(-len(groups) // cols)
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    xlim, ylim = _limits([*summaries, *view.summaries.values()], flops_unit)
    for ax in axes:
        ax.set(xlim=xlim, ylim=ylim)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    for ax in axes[max(0, len(groups) - cols) : len(groups)]:
        ax.tick_params(labelbottom=True)  # nothing below it: it shows the x scale itself
    fig.supxlabel(XLABEL, fontsize=9)
    fig.supylabel("validation loss (nats)", fontsize=9)
    used = {_style_key(judged.get(s.name)) for g in groups for s in g}
    moved = [s for g in groups for s in g if view.moved(s) is not None]
    used |= {_style_key(view.judged.get(s.name)) for s in moved}
    fig.legend(
        handles=_legend(used, any(len(g) > 1 for g in groups), bool(moved)),
        loc="outside upper center",
        ncols=min(3, max(cols, 2)),  # a key wider than the panels is cut off
        fontsize=8,
        frameon=False,
        title=title or DEFAULT_TITLE,
        title_fontsize=12,  # the figure's title: above the key
    )
    labels = [
        _panel(ax, g, top_k, judged, flops_unit, view) for ax, g in zip(axes, groups, strict=False)
    ]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()  # lay the panels out: labels are placed in display space
    fig.set_layout_engine("none")  # and keep that layout when saving
    for ax, panel_labels in zip(axes, labels, strict=False):
        _label_panel(ax, renderer, panel_labels)
    return fig


def _legend(used: set[str], joined: bool, training: bool = False) -> list[Line2D]:
    """The key: the frontier, the family line (``joined``: some family has 2+ points), the
    training-compute line (``training``: some point moved) and the verdicts ``used``."""
    handles = [Line2D([], [], color="black", lw=1.8, marker="o", ms=4.5, label="top-k frontier")]
    if joined:
        handles.append(
            Line2D([], [], color="#888888", lw=1.0, ls="--", label="the family, in compute order")
        )
    if training:
        handles.append(
            Line2D(
                [],
                [],
                color="#555555",
                lw=1.0,
                ls=":",
                marker="o",
                ms=4.5,
                mfc="white",
                markevery=[1],
                label=TRAINING_TEXT,
            )
        )
    for key, st in VERDICT_STYLES.items():
        if key in used:
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker=st.marker,
                    ms=7,
                    mec=st.color,
                    mew=1.4,
                    mfc=st.color if st.filled else "white",
                    label=st.text,
                )
            )
    return handles


def plot_frontier(
    records: Sequence[dict[str, Any]], path: Path | str, title: str = "", flops_unit: float = 1e6
) -> Path:
    """PNG of :func:`frontier_figure` at ``path`` (written atomically).

    Returns:
        Path: ``path``.
    """
    from dynroute.analysis.plots import save_figure

    return save_figure(frontier_figure(records, title, flops_unit), path)


def replot(results: Path | str, plot: Path | str | None = None, title: str | None = None) -> Path:
    """Redraw the plot of a finished frontier run from its results JSON; nothing is trained.

    Args:
        results: ``results.json`` of ``dynroute demo`` or the JSON of ``dynroute bench
            frontier`` (e.g. ``benchmarks/results/frontier.json``).
        plot: where to write the PNG (default: where the run wrote it, beside ``results``).
        title: the figure's title (default: the run's).

    Raises:
        FileNotFoundError / ValueError: no such file, or not a frontier results file.

    Example:
        >>> replot("NOPE/results.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        FileNotFoundError: NOPE/results.json not found; pass the results.json of a ...
    """
    results = Path(results)
    if not results.is_file():
        raise FileNotFoundError(
            f"{results} not found; pass the results.json of a `dynroute demo` or the JSON of a "
            "`dynroute bench frontier` run"
        )
    payload = json.loads(results.read_text(encoding="utf-8"))
    if not isinstance(payload, dict) or not payload.get("runs"):
        raise ValueError(
            f"{results} holds no frontier runs (no 'runs' list); pass the results.json of a "
            "finished `dynroute demo` or `dynroute bench frontier` run"
        )
    records = [_finite(r) for r in payload["runs"]]
    stored = str(payload.get("plot") or results.with_suffix(".png").name)
    target = (
        Path(plot)
        if plot is not None
        else (results.parent / stored if Path(stored).name == stored else Path(stored))
    )
    seeds = len(payload.get("seeds") or {r["seed"] for r in records})
    name = title or payload.get("title") or f"{DEFAULT_TITLE}, {seeds} seed(s)"
    return plot_frontier(records, target, title=name)


def _finite(run: dict[str, Any]) -> dict[str, Any]:
    """A stored run with its missing numbers (JSON ``null``) back as NaN."""
    keys = ("val_loss", "expert_flops", "mean_experts_per_token",
            "training_expert_flops", "training_mean_experts_per_token")  # fmt: skip
    return {**run, **{k: math.nan for k in keys if run.get(k) is None}}
