"""The frontier's plot (small multiples, verdict markers, labels that fit), its replot from
a results file, and its tables (no minus on a zero, router names whole in a pipe)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from rich.console import Console

from dynroute.common.jsonfile import write_json
from dynroute.common.tables import print_table
from dynroute.frontier import frontier_figure, judge, markdown_table, record, replot
from dynroute.frontier.demo import results_table
from dynroute.frontier.plot import VERDICT_STYLES
from strict_json import load_strict

# the frontier: top-k at k = 1, 2, 3 (loss falls with compute), three seeds
_FRONTIER = {1: 3.0, 2: 2.8, 3: 2.7}


def _records(families: dict[str, dict[str, tuple[float, float]]], seeds: int = 3) -> list[dict]:
    """Top-k plus ``families``: {family: {label: (flops, loss offset from the frontier)}}."""
    recs = []
    for seed in range(seeds):
        noise = 0.002 * seed
        for k, loss in _FRONTIER.items():
            recs.append(
                record(
                    "top_k",
                    f"top_k-k{k}",
                    f"top_k(k={k})",
                    seed,
                    loss + noise,
                    k,
                    k,
                    eval_tokens=64,
                )
            )
        for family, points in families.items():
            for label, (flops, offset) in points.items():
                lo, hi = math.floor(flops), min(math.floor(flops) + 1, 3)
                w = flops - lo
                frontier = _FRONTIER[lo] * (1 - w) + _FRONTIER[hi] * w
                # a seed-dependent wobble: the verdict needs a spread over seeds
                loss = frontier + noise + offset + 0.001 * (seed - 1)
                recs.append(record(family, label, label, seed, loss, flops, flops, eval_tokens=64))
    return recs


FAMILIES = {
    "top_p": {
        "top_p(p=0.2)": (1.2, -0.05),  # below
        "top_p(p=0.3)": (1.6, 0.0),  # on
        "top_p(p=0.5)": (2.5, 0.05),  # above
    },
    "null_experts": {
        "null_experts(k=2, num_null=4)": (1.4, 0.04),
        "null_experts(k=4, num_null=4)": (3.5, 0.0),  # outside top-k's range
    },
    "relu": {"relu(target=1.5)": (1.5, -0.06), "relu()": (2.0, -0.01)},
}


def _visible(fig: Any) -> list[Any]:
    return [ax for ax in fig.axes if ax.get_visible()]


def test_one_panel_per_family_each_with_the_frontier() -> None:
    fig = frontier_figure(_records(FAMILIES), title="t", flops_unit=1.0)
    panels = _visible(fig)
    assert [ax.get_title() for ax in panels] == [
        "top_p",
        "null_experts (num_null=4)",  # what a family's points share goes to the title
        "relu",
    ]
    for ax in panels:  # the frontier, black, through top-1/2/3, in every panel
        black = [
            ln for ln in ax.get_lines() if ln.get_color() == "black" and len(ln.get_xdata()) == 3
        ]
        assert black and list(black[0].get_xdata()) == [1.0, 2.0, 3.0]
    xlims = {ax.get_xlim() for ax in panels}
    assert len(xlims) == 1  # shared axes: panels compare at a glance


def test_every_point_wears_its_verdict() -> None:
    recs = _records(FAMILIES)
    verdicts = {j.summary.label: j.verdict for j in judge(recs)}
    assert verdicts["top_p(p=0.2)"] == "below" and verdicts["top_p(p=0.5)"] == "above"
    assert verdicts["top_p(p=0.3)"] == "on"
    assert verdicts["null_experts(k=4, num_null=4)"] == "outside"
    fig = frontier_figure(recs, flops_unit=1.0)
    # a family's point: one marker of size 7 (the frontier's are smaller, black)
    drawn = {
        round(float(line.get_xdata()[0]), 6): line
        for ax in _visible(fig)
        for line in ax.get_lines()
        if len(line.get_xdata()) == 1 and line.get_markersize() == 7
    }
    assert len(drawn) == len(verdicts)
    for label, verdict in verdicts.items():
        flops = next(r["expert_flops"] for r in recs if r["label"] == label)
        line, style = drawn[round(flops, 6)], VERDICT_STYLES[verdict]
        assert line.get_marker() == style.marker, label
        assert line.get_markeredgecolor() == style.color, label
        assert (line.get_markerfacecolor() == "white") == (not style.filled), label


def test_labels_fit_inside_their_panel_and_never_overlap() -> None:
    # crowded: eight settings of one family within a sliver of compute
    crowded = {"top_p": {f"top_p(p={p / 100})": (1.5 + p / 1000, 0.0) for p in range(8)}}
    fig = frontier_figure(_records(crowded), flops_unit=1.0)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.canvas.draw()
    for ax in _visible(fig):
        frame = ax.get_window_extent(renderer)
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert boxes, "some labels fit"
        assert len(boxes) < 8 + 3  # not all of them: the rest would overlap
        for i, box in enumerate(boxes):
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1
            assert frame.y0 <= box.y0 and box.y1 <= frame.y1
            assert not any(box.overlaps(other) for other in boxes[i + 1 :])


def test_labels_name_what_varies_in_the_family() -> None:
    fig = frontier_figure(_records(FAMILIES))
    texts = {t.get_text() for ax in _visible(fig) for t in ax.texts}
    assert {"p=0.2", "p=0.5", "target=1.5", "default"} <= texts
    assert not any("num_null" in t for t in texts)  # in the title instead


def test_replot_redraws_from_the_results_file_alone(tmp_path: Path) -> None:
    recs = _records(FAMILIES, seeds=1)  # one seed: margins' spread is NaN -> null
    recs[0]["mean_experts_per_token"] = math.nan
    results = tmp_path / "frontier.json"
    write_json(results, {"runs": recs, "seeds": [0], "plot": "frontier.png", "title": "old"})
    stored = load_strict(results)  # strict JSON, nulls where NaN was
    assert stored["runs"][0]["mean_experts_per_token"] is None
    png = replot(results)
    assert png == tmp_path / "frontier.png" and png.read_bytes()[:4] == b"\x89PNG"
    other = replot(results, tmp_path / "x.png", title="new")
    assert other.read_bytes()[:4] == b"\x89PNG"


def test_replot_refuses_what_is_not_a_frontier_run(tmp_path: Path) -> None:
    (tmp_path / "stats.json").write_text(json.dumps({"meta": {}}))
    with pytest.raises(ValueError, match="no frontier runs"):
        replot(tmp_path / "stats.json")
    with pytest.raises(FileNotFoundError, match=r"nope\.json not found"):
        replot(tmp_path / "nope.json")


def test_tables_print_no_minus_on_a_zero() -> None:
    # a router a hair worse than top-2 in every seed: a margin of -1e-7 nats
    recs = _records({"twin": {"twin(k=2)": (2.0, 0.0)}})
    for r in recs:
        if r["family"] == "twin":
            top2 = next(t for t in recs if t["name"] == "top_k-k2" and t["seed"] == r["seed"])
            r["val_loss"] = top2["val_loss"] + 1e-7
    (j,) = judge(recs)
    assert -1e-6 < j.margin < 0
    table = markdown_table(recs)
    assert "-0.0000" not in table and "| +0.0000 ± 0.0000 |" in table
    rendered = _render(results_table(recs, judge(recs), 3), width=200)
    assert "-0.000" not in rendered and "+0.000" in rendered


def _render(table: Any, width: int, terminal: bool = False) -> str:
    out = io.StringIO()
    print_table(Console(file=out, width=width, force_terminal=terminal, color_system=None), table)
    return out.getvalue()


def test_demo_table_keeps_router_names_whole_in_a_pipe() -> None:
    long = "top_p(p=0.4, normalize=True)"
    recs = _records({"top_p(normalize=True)": {long: (1.5, -0.01)}, "dtop_p": {
        "dtop_p(target=1.5)": (1.5, 0.0)}})  # fmt: skip
    table = results_table(recs, judge(recs), 3)
    piped = _render(table, width=80)  # a pipe: rich's console is 80 columns wide
    assert long in piped and "top_k(k=1)" in piped
    assert "expert MFLOPs/token" in piped  # headers whole too: the table is not squeezed
    # a narrow terminal: the names still stay whole, the number headers wrap instead
    assert long in _render(results_table(recs, judge(recs), 3), width=80, terminal=True)
