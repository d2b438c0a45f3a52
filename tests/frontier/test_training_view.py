"""The training-compute view: each router placed by its mean k̄ over training too, in the
table, the plot, the verdict and the results file (older results: the final view only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from dynroute.common.jsonfile import write_json
from dynroute.common.tables import print_table
from dynroute.frontier import frontier_figure, judge, markdown_table, record, replot
from dynroute.frontier.benchmark import training_results
from dynroute.frontier.demo import results_table
from dynroute.frontier.plot import TRAINING_TEXT
from dynroute.frontier.report import HEADER, TRAINING_HEADER
from dynroute.frontier.training import (
    extra_compute,
    has_training_view,
    training_judgements,
    training_sentence,
)

_FRONTIER = {1: 3.0, 2: 2.8, 3: 2.7}


def _rec(family: str, name: str, seed: int, loss: float, k: float, k_train: float) -> dict:
    # FLOPs = k̄ here: one layer, one FLOP per expert
    extra = {"training_expert_flops": k_train, "training_mean_experts_per_token": k_train}
    return record(family, name, name, seed, loss, k, k, eval_tokens=64, **extra)


def _records() -> list[dict[str, Any]]:
    """Three seeds of top-k; ReLU below the frontier at its final k̄ 1.5 (0.1 nats) but
    trained at k̄ 2.5; top-p trained at its final k̄, on the frontier."""
    recs = []
    for seed in range(3):
        wobble = 0.002 * seed
        recs += [
            _rec("top_k", f"top_k(k={k})", seed, y + wobble, k, k) for k, y in _FRONTIER.items()
        ]
        recs.append(_rec("relu", "relu()", seed, 2.8 + wobble + 0.001 * seed, 1.5, 2.5))
        recs.append(
            _rec("top_p", "top_p(p=0.3)", seed, 2.9 + wobble + 0.001 * (seed - 1), 1.5, 1.5)
        )
    return recs


def test_training_view_judges_each_router_at_its_training_compute() -> None:
    recs = _records()
    final = {j.summary.name: j for j in judge(recs)}
    trained = {j.summary.name: j for j in training_judgements(recs)}
    assert final["relu()"].verdict == "below" and final["relu()"].margin > 0.09
    # at k̄ 2.5 the frontier is at 2.75: ReLU's 2.8 is above it
    assert trained["relu()"].verdict == "above"
    assert trained["relu()"].margin < -0.04
    assert final["top_p(p=0.3)"].verdict == trained["top_p(p=0.3)"].verdict == "on"
    assert extra_compute(recs)["relu()"] == 2.5 / 1.5 - 1
    assert extra_compute(recs)["top_k(k=2)"] == 0.0  # the frontier does not move


def test_verdict_text_gives_both_views() -> None:
    text = training_sentence(_records())
    assert text.startswith("relu() is below the frontier (+0.")
    assert "at its final k̄ 1.50, but it trained at a mean k̄ of 2.50: 67% more expert" in text
    assert "at its training compute it is above the frontier (-0.0" in text
    assert text.endswith("same verdict in both views: top_p(p=0.3).")
    payload = training_results(_records())
    assert [j["verdict"] for j in payload["training_judgements"]] == ["above", "on"]
    assert payload["training_view_verdict"].startswith("No router beats the top-k frontier")


def test_tables_have_both_views() -> None:
    lines = markdown_table(_records()).splitlines()
    assert lines[0] == "| " + " | ".join(HEADER + TRAINING_HEADER) + " |"
    relu = next(line for line in lines if line.startswith("| relu() |"))
    cells = [c.strip() for c in relu.strip("|").split("|")]
    assert cells[6] == "below" and cells[7] == "2.50 ± 0.00" and cells[9] == "above"
    top2 = next(line for line in lines if line.startswith("| top_k(k=2) |"))
    assert top2.endswith("| 2.00 ± 0.00 | — | frontier |")
    console = Console(width=250, record=True)
    print_table(console, results_table(_records(), judge(_records()), 3))
    text = console.export_text()
    assert "training verdict" in text and "experts/token in training" in text
    assert "relu()" in text and " above" in text.split("relu()")[1].splitlines()[0]


def test_results_without_training_compute_keep_the_final_view_only() -> None:
    old = [{k: v for k, v in r.items() if not k.startswith("training")} for r in _records()]
    assert not has_training_view(old) and training_sentence(old) == ""
    assert markdown_table(old).splitlines()[0] == "| " + " | ".join(HEADER) + " |"
    assert training_results(old) == {}


def test_plot_draws_the_training_compute_of_a_router_that_moved(tmp_path: Path) -> None:
    fig = frontier_figure(_records(), flops_unit=1.0)
    relu = next(ax for ax in fig.axes if ax.get_title() == "relu")
    dotted = [line for line in relu.get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == 1
    assert [float(x) for x in dotted[0].get_xdata()] == [
        1.5,
        2.5,
    ]  # final k̄ to mean k̄ over training
    assert relu.get_xlim()[1] > 2.5
    top_p = next(ax for ax in fig.axes if ax.get_title() == "top_p")
    assert not [line for line in top_p.get_lines() if line.get_linestyle() == ":"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert TRAINING_TEXT in legend
    # replot keeps it: the results file holds the training fields
    results = tmp_path / "frontier.json"
    write_json(results, {"runs": _records(), "title": "t"})
    assert replot(results).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(results.read_text())["runs"][0]["training_expert_flops"] == 1
